"""Deployment state of the scoring stage and the ``model-control`` commands that change it.

``model-control`` is a compacted topic of JSON commands. The record key is the command's
*slot*: a later command in the same slot replaces an earlier one, so replaying the
compacted topic in offset order gives the same state as replaying every command.

| command | slot | effect |
|---|---|---|
| ``{"command": "activate", "model": "gbdt:v2"}`` | arms | one arm ``active`` serves all traffic; clears a rollback |
| ``{"command": "experiment", "arms": [{"name", "model", "weight"}, ...]}`` | arms | A/B split by a stable hash of ``user_id``; weights sum to 1; clears a rollback |
| ``{"command": "shadow", "model": "mlp:v1"}`` (``null`` clears) | shadow | a shadow model scores the same rows; its scores are marked ``arm = "shadow"`` |
| ``{"command": "fallback", "model": "mlp:v1"}`` | fallback | the known-good fallback |
| ``{"command": "rollback", "reason": "..."}`` | rollback | every arm is served by the fallback (the default score if none) until a ``resume``, ``activate`` or ``experiment`` |
| ``{"command": "resume"}`` | rollback | undo a rollback |

>>> d = Deployment.single("gbdt:v1", fallback="mlp:v1")
>>> d = apply_command(d, b'{"command": "experiment", "arms": [{"name": "control", "model": "gbdt:v1", "weight": 0.5},'
...                      b' {"name": "treatment", "model": "gbdt:v2", "weight": 0.5}]}', lambda r: r)
>>> [a.name for a in d.arms], d.revision
(['control', 'treatment'], 1)
>>> apply_command(d, b'{"command": "rollback", "reason": "x"}', lambda r: r).rolled_back
True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

RESERVED_ARMS = ("shadow",)
SLOTS = {"activate": "arms", "experiment": "arms", "shadow": "shadow", "fallback": "fallback",
         "rollback": "rollback", "resume": "rollback"}


class ControlError(ValueError):
    """A model-control command is malformed or names something that does not exist."""


@dataclass(frozen=True)
class Arm:
    name: str
    model: str  # name:version
    weight: float


@dataclass(frozen=True)
class Deployment:
    arms: tuple[Arm, ...]
    shadow: str | None = None
    fallback: str | None = None
    rolled_back: bool = False
    rollback_reason: str = ""
    revision: int = 0  # commands applied

    @classmethod
    def single(cls, model: str | None, fallback: str | None = None) -> Deployment:
        return cls(arms=(Arm("active", model, 1.0),) if model else (), fallback=fallback)

    def models(self) -> set[str]:
        """Every model reference the deployment needs loaded."""
        refs = {a.model for a in self.arms}
        refs.update(r for r in (self.shadow, self.fallback) if r)
        return refs

    def describe(self) -> dict[str, Any]:
        return {"arms": [{"name": a.name, "model": a.model, "weight": a.weight} for a in self.arms],
                "shadow": self.shadow, "fallback": self.fallback, "rolled_back": self.rolled_back,
                "rollback_reason": self.rollback_reason, "revision": self.revision}


def parse_command(raw: bytes | str | None) -> dict[str, Any]:
    """The command object of one control record (JSON), or ControlError."""
    if raw is None:
        raise ControlError("empty control record")
    try:
        cmd = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(f"control record is not JSON: {exc}") from exc
    if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str) or cmd["command"] not in SLOTS:
        raise ControlError(f"unknown control command {cmd.get('command') if isinstance(cmd, dict) else cmd!r}; "
                           f"one of {sorted(SLOTS)}")
    return cmd


def _model(cmd: dict[str, Any], key: str, resolve: Callable[[str], str], optional: bool = False) -> str | None:
    ref = cmd.get(key)
    if ref is None and optional:
        return None
    if not isinstance(ref, str) or not ref:
        raise ControlError(f"{cmd['command']}: '{key}' must be a model reference (name or name:version)")
    return resolve(ref)


def _arms(cmd: dict[str, Any], resolve: Callable[[str], str]) -> tuple[Arm, ...]:
    raw = cmd.get("arms")
    if not isinstance(raw, list) or not raw:
        raise ControlError("experiment: 'arms' must be a non-empty list")
    arms = []
    for a in raw:
        if not isinstance(a, dict):
            raise ControlError(f"experiment: arm {a!r} is not an object")
        name, weight = a.get("name"), a.get("weight")
        if not isinstance(name, str) or not name or name in RESERVED_ARMS:
            raise ControlError(f"experiment: bad arm name {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
            raise ControlError(f"experiment: arm {name!r} weight {weight!r} must be in (0, 1]")
        model = _model({**a, "command": "experiment"}, "model", resolve)
        arms.append(Arm(name, str(model), float(weight)))
    if len({a.name for a in arms}) != len(arms):
        raise ControlError("experiment: arm names must be unique")
    total = math.fsum(a.weight for a in arms)
    if abs(total - 1.0) > 1e-6:
        raise ControlError(f"experiment: weights sum to {total:g}, not 1")
    return tuple(arms)


def apply_command(dep: Deployment, raw: bytes | str | None, resolve: Callable[[str], str]) -> Deployment:
    """The deployment after one control record. ``resolve`` maps a model reference to its
    ``name:version`` and raises ControlError for an unknown one. The input is unchanged
    on error (ControlError), so the job keeps serving what it served."""
    cmd = parse_command(raw)
    kind = cmd["command"]
    nxt = dep
    if kind == "activate":
        nxt = replace(dep, arms=(Arm("active", str(_model(cmd, "model", resolve)), 1.0),), rolled_back=False,
                      rollback_reason="")
    elif kind == "experiment":
        nxt = replace(dep, arms=_arms(cmd, resolve), rolled_back=False, rollback_reason="")
    elif kind == "shadow":
        nxt = replace(dep, shadow=_model(cmd, "model", resolve, optional=True))
    elif kind == "fallback":
        nxt = replace(dep, fallback=_model(cmd, "model", resolve))
    elif kind == "rollback":  # accepted without a fallback too (the default score serves), so that
        # the compacted topic replays to the same state whatever the order of its slots
        nxt = replace(dep, rolled_back=True, rollback_reason=str(cmd.get("reason") or "operator rollback")[:200])
    elif kind == "resume":
        nxt = replace(dep, rolled_back=False, rollback_reason="")
    return replace(nxt, revision=dep.revision + 1)


def command_record(command: str, **fields: Any) -> tuple[bytes, bytes]:
    """``(key, value)`` of a control record: the key is the command's slot.

    >>> command_record("shadow", model="mlp:v1")[0]
    b'shadow'
    """
    if command not in SLOTS:
        raise ControlError(f"unknown control command {command!r}")
    return SLOTS[command].encode(), json.dumps({"command": command, **fields}, sort_keys=True).encode()


def arm_bucket(user_id: str) -> float:
    """A stable position in [0, 1) for ``user_id`` (the same in every process and run).

    >>> arm_bucket("alice") == arm_bucket("alice") and 0 <= arm_bucket("alice") < 1
    True
    """
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8, person=b"streamscore-ab").digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_arms(user_ids: Sequence[str], arms: Sequence[Arm]) -> np.ndarray:
    """Index into ``arms`` for each user: cumulative weights over ``arm_bucket``."""
    if not arms:
        return np.zeros(len(user_ids), dtype=np.int64)
    edges = np.cumsum([a.weight for a in arms])
    edges[-1] = 1.0
    buckets = np.fromiter((arm_bucket(u) for u in user_ids), dtype=np.float64, count=len(user_ids))
    return np.minimum(np.searchsorted(edges, buckets, side="right"), len(arms) - 1)
