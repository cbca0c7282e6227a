"""Places-LT (365 classes, 62,500 training images), ResNet-152 from ImageNet weights, LDAM-DRS (+ SAFA).

Data: the OLTR lists (Places_LT_train.txt, Places_LT_test.txt) over a Places365 image tree.
Weights: convert torchvision's ImageNet ResNet-152 once with
  python -m safa_jax.convert_torchvision --input=resnet152.pth --model=resnet152 --output=weights/resnet152
Usage: --config=configs/places_lt.py:/path/to/lists --config.data.data_dir=/path/to/places365
       --config.model.init_checkpoint=weights/resnet152
"""

from configs import large_scale


def get_config(lists_dir: str | None = None):
    config = large_scale.large_scale_config(
        source=f"places_lt:{lists_dir or 'data/Places_LT'}", model="resnet152", epochs=30, learning_rate=0.01,
        warmup_epochs=0, decay_epochs=(9, 19), weight_decay=1e-4, ldam_max_margin=0.2, ldam_scale=50.0,
        second_stage_epoch=10)
    # RSG's published Places-LT numbers start from ImageNet weights: without model.init_checkpoint the run is
    # refused unless --config.model.allow_random_init=True says random weights are meant.
    config.model.allow_random_init = False
    return config
