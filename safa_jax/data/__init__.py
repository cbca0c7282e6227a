"""Data: long-tailed splits on the host, batches and augmentation on the device.

- `longtail`: the CIFAR-LT class-count profile, which images each class keeps, shot buckets (numpy).
- `sources`: `load_data(config.data)` for the digits, TFDS and image-folder sources (numpy, Pillow;
  TensorFlow only for TFDS).
- `device_pipeline`: batch indices, crop/flip and normalisation inside the jitted train step (jnp).

The modules are not re-exported here, so importing the host side does not pull in JAX and the reverse.
"""
