"""Attacks, chosen by name from one registry."""

from __future__ import annotations

from typing import Callable

from fastpart.attacks.apgd import apgd
from fastpart.attacks.mma import mma, mma_ref
from fastpart.attacks.pgd import pgd

ATTACKS: dict[str, Callable] = {"pgd": pgd, "apgd": apgd, "mma": mma, "mma_ref": mma_ref}
