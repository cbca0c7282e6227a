"""iNaturalist 2018 (8,142 classes, 435,713 training images), ResNet-50 from scratch, LDAM-DRS (+ SAFA).

Data: the tfds builder `i_naturalist2018` (prepared in --config.data.data_dir); train on "train",
test on "validation". Usage: python -m safa_jax.main --config=configs/inat18.py --workdir=gs://.../inat
"""

from configs import large_scale


def get_config(arg: str | None = None):
    del arg
    config = large_scale.large_scale_config(
        source="tfds:i_naturalist2018", model="resnet50", epochs=180, learning_rate=0.1, warmup_epochs=5,
        decay_epochs=(99, 139, 169), weight_decay=5e-5, ldam_max_margin=0.1, ldam_scale=50.0,
        second_stage_epoch=140)
    # The iNaturalist training recipes of BBN and of decoupling (cRT) add ColorJitter(0.4, 0.4, 0.4).
    config.data.color_jitter = 0.4
    return config
