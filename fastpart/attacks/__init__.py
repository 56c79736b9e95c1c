"""Attacks under an L-inf budget that may differ per pixel, with one contract.

Every attack takes x (B, C, H, W) in [0, 1], labels y (B,), a budget ``eps`` (a float, a tensor
broadcastable to x, or ``fastpart.kernels.EpsLevels``), a number of ``steps``, an optional ``generator``
for its random start and ``autocast_dtype``; losses are per sample (``losses.LossFn``). The model runs in
eval mode and only input gradients are taken.

    pgd.pgd          PGD / PART's mask-weighted PGD (fused step)     apgd.apgd   Auto-PGD (APGD)
    mma.mma          minimum-margin attack (APGD, top-k targets)     mma.mma_ref the released sign-PGD variant
    single_step      fgsm_rs (FGSM with a random start), n_fgsm (N-FGSM): one gradient, per-pixel budgets
    objects          PGD, PARTAttack: the attacks as callable objects, torchattacks style (attack(x, y) -> x_adv)
    losses           the losses attacks ascend (ce_loss, margin_loss_targeted, margin): ``from fastpart.attacks
                     import losses``
    robust           robust_correct / robust_accuracy: what counts as robust (one definition); the public
                     attacks' argument checks
    generators       the training-time generators by name (pgd, pgd-compiled, mma, fgsm-rs, n-fgsm): what the training step calls

Submodules are imported where they are used, so ``import fastpart.attacks.pgd`` loads only PGD (and the small
``losses`` and ``robust`` it uses).
"""

from fastpart.attacks import losses

__all__ = ["losses"]
