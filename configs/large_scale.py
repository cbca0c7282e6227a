"""The recipe shared by the large-scale configs (RSG's public settings; SAFA's own are not public).

SGD momentum 0.9, global batch 256 (independent of the device count; the last partial batch of an epoch
is dropped, as RSG's loaders do), RandomResizedCrop 224 + flip for training, resize 256 + center-crop 224
for testing, data streamed from disk, SAFA after stage 3 of the ResNet (R, RSG's choice).

As RSG's training scripts, which produced its published numbers (LDAM-DRS-RSG):
- LDAM with deferred re-sampling (`loss.train_rule="drs"`): class-balanced batches from the second-stage
  epoch on, drawn with the reference sampler's weights (1 - 0.9999) / (1 - 0.9999**n_c)
  (`loss.sampling_weights="class_balanced"`), no loss re-weighting. The LDAM paper's LDAM-DRW (iNaturalist
  2018: 68.0 %) is `--config.loss.train_rule=drw`.
- The learning-rate drops at the 0-based epochs the scripts use: they drop when epoch + 1 exceeds
  59 / 79 / 94 (ImageNet-LT), 99 / 139 / 169 (iNaturalist) and 9 / 19 (Places-LT), one epoch before the
  "after 60, 80, 95" of the text; each config lists its epochs. Warm-up lr * (e + 1) / 5 over epochs e < 5
  (none on Places-LT), per epoch as theirs.
"""

from configs import common

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def large_scale_config(*, source: str, model: str, epochs: int, learning_rate: float, warmup_epochs: int,
                       decay_epochs: tuple[int, ...], weight_decay: float, ldam_max_margin: float,
                       ldam_scale: float, second_stage_epoch: int):
    config = common.get_config()
    config.data.source = source
    config.data.pipeline = "stream"
    config.data.subsample = False  # these datasets are long-tailed as published.
    config.data.image_size = 224
    config.data.channels = 3
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.model.name = model
    config.model.width = 64
    config.loss.name = "ldam"
    config.loss.train_rule = "drs"
    config.loss.ldam_max_margin = ldam_max_margin
    config.loss.ldam_scale = ldam_scale
    config.loss.second_stage_epoch = second_stage_epoch
    config.batch_size = 256
    config.eval_batch_size = 256
    config.num_epochs = epochs
    config.optim.learning_rate = learning_rate
    config.optim.warmup_epochs = warmup_epochs
    config.optim.decay_epochs = decay_epochs
    config.optim.decay_factors = tuple(0.1 ** (i + 1) for i in range(len(decay_epochs)))  # x0.1 at each drop.
    config.optim.weight_decay = weight_decay
    config.safa.stage = 3
    config.safa.start_epoch = second_stage_epoch
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    config.eval_every_epochs = 10
    return config
