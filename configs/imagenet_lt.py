"""ImageNet-LT (1,000 classes, 115,846 training images), ResNet-50, LDAM-DRS (+ SAFA).

Data, either
- the OLTR lists (ImageNet_LT_train.txt, ImageNet_LT_test.txt) applied to an ImageNet-2012 image tree:
  --config=configs/imagenet_lt.py:/path/to/lists --config.data.data_dir=/path/to/imagenet
- or tfds's `imagenet_lt` builder (the same OLTR subsets; prepared in --config.data.data_dir from the ImageNet
  tars): --config=configs/imagenet_lt.py:tfds --config.data.data_dir=/path/to/tfds. Train on its "train"
  split (115,846), test on its "test" split (50,000, the OLTR test set); its "validation" split (20,000)
  is OLTR's validation set, unused here as in RSG.
RSG's published ImageNet-LT numbers use ResNeXt-50 (32x4d): --config.model.name=resnext50_32x4d; ResNet-50, the
common alternative, is the default here.
"""

from configs import large_scale


def get_config(lists_dir: str | None = None):
    source = "tfds:imagenet_lt" if lists_dir == "tfds" else f"imagenet_lt:{lists_dir or 'data/ImageNet_LT'}"
    config = large_scale.large_scale_config(
        source=source, model="resnet50", epochs=100, learning_rate=0.1,
        warmup_epochs=5, decay_epochs=(59, 79, 94), weight_decay=2e-4, ldam_max_margin=0.3, ldam_scale=30.0,
        second_stage_epoch=80)
    config.data.color_jitter = 0.4  # RSG's ImageNet-LT training transform: ColorJitter(0.4, 0.4, 0.4, 0).
    return config
