"""Attacks, chosen by name from one registry."""

from __future__ import annotations

from typing import Callable

from fastpart.attacks.pgd import pgd

ATTACKS: dict[str, Callable] = {"pgd": pgd}
