"""The Delta-encoder (Schwartz et al., NeurIPS 2018) as SAFA's supplementary compares it: a subset of SAFA.

Deltas are extracted from same-class head pairs by an encoder (SAFA's E) and applied to tail features by a
decoder (SAFA's G), trained with reconstruction only: G([F_h ; E([F_h ; F_h'])]) should give F_h'. Unlike
SAFA there is no sample-specific delta generator D (the head delta is applied as it is), no recycling term,
no contrastive module Q and no mode seeking. It reuses SAFA's modules, pairing, slots and insertion point,
so it reads `config.safa` for the placement (`stage`), `head_ratio`, `num_slots`, `start_epoch`,
`kernel_size`, `delta_channels`, `tail_sampling`, `lambda_reconstruction` and the augmented samples' loss
settings; SAFA's other terms do not apply.
"""

import ml_collections

from safa_jax.methods.safa import SafaMethod


class DeltaEncoderMethod(SafaMethod):
    """SAFA's E and G with the head-reconstruction loss alone."""

    name = "delta_encoder"
    label = " + Delta-encoder"
    delta_encoder = True

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        SafaMethod.validate(config)
        if not config.safa.use_reconstruction or config.safa.lambda_reconstruction <= 0:
            raise ValueError(f"config.method='delta_encoder' trains by reconstruction only, and "
                             f"config.safa.use_reconstruction={config.safa.use_reconstruction}, "
                             f"config.safa.lambda_reconstruction={config.safa.lambda_reconstruction} would leave "
                             "it untrained; allowed: use_reconstruction=True with lambda_reconstruction > 0")
