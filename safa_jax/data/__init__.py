"""Data: long-tailed splits on the host, batches and augmentation on the device or on the host.

- `registry`: every form of `config.data.source`, which pipeline reads it, the one validator of `config.data`,
  and `load_training_data`, which hands the config to its pipeline.
- `dataset`: `Dataset`, what both pipelines' loaders return (class counts and names, ids, labels, test batches).
- `sources`: the in-memory pipeline (digits, TFDS, image folders; numpy, Pillow; TensorFlow only for TFDS).
- `streaming`, `lt_lists`: the streamed pipeline (tf.data on the host; image folders, TFDS, the OLTR lists).
- `longtail`: the CIFAR-LT class-count profile, which images each class keeps, shot buckets (numpy).
- `device_pipeline`, `step_input`, `mixup`: what the jitted step does with its batch (jnp).

The modules are not re-exported here, so importing the host side does not pull in JAX and the reverse.
"""
