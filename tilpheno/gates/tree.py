"""The population tree evaluator: one implementation for YAML strategies, Gating-ML and FlowJo.

A population's mask is its gate's own membership (:meth:`Gate.membership`: geometry on the
dimension arrays, or a boolean combination of other populations' masks), complemented when the
population says so (FlowJo ``eventsInside="0"``), ANDed with its parent's mask (all events at
the root). Every mask covers all events of the file.

:func:`population_mask` evaluates one population once its parent and operands are known (the
YAML engine places data-driven gates population by population and calls it after each
placement); :func:`evaluate_tree` evaluates a whole tree of fixed gates (Gating-ML documents,
FlowJo workspaces, strategies built in code), in dependency order, with cycle detection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from tilpheno.errors import GatingError
from tilpheno.gates.geometry import Data, Gate


@dataclass(frozen=True)
class Node:
    """One population of a tree: ``name``, ``parent`` (None = all events), its ``gate``.

    ``complement``: the population is the parent's events *outside* the gate.
    """

    name: str
    parent: str | None
    gate: Gate
    complement: bool = False

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Populations evaluated first: the parent and a boolean gate's operands."""
        own = (self.parent,) if self.parent is not None else ()
        return own + tuple(getattr(self.gate, "operands", ()))


def population_mask(gate: Gate, data: Data, masks: Mapping[str, np.ndarray], parent: str | None, n_events: int,
                    complement: bool = False) -> np.ndarray:
    """The mask of one population: ``membership`` (complemented if asked) AND the parent's mask."""
    own = gate.membership(data, masks)
    if complement:
        own = ~own
    if parent is None:
        return own if own.shape == (n_events,) else np.broadcast_to(own, (n_events,)).copy()
    try:
        return own & masks[parent]
    except KeyError:
        raise GatingError(f"parent population {parent!r} has not been evaluated") from None


def dependency_order(nodes: Sequence[Node], source: str = "") -> list[Node]:
    """``nodes`` with every parent and operand before its dependents (input order otherwise)."""
    by_name = {n.name: n for n in nodes}
    where = f"{source}: " if source else ""
    if len(by_name) != len(nodes):
        seen: set[str] = set()
        dup = next(n.name for n in nodes if n.name in seen or seen.add(n.name))  # type: ignore[func-returns-value]
        raise GatingError(f"{where}population {dup!r} is defined twice")
    ordered: list[Node] = []
    state: dict[str, int] = {}

    def visit(node: Node, chain: tuple[str, ...]) -> None:
        if state.get(node.name) == 2:
            return
        if state.get(node.name) == 1:
            raise GatingError(f"{where}gate references form a cycle: {' -> '.join(chain + (node.name,))}")
        state[node.name] = 1
        for ref in node.depends_on:
            if ref not in by_name:
                raise GatingError(f"{where}population {node.name!r} refers to unknown population {ref!r}")
            visit(by_name[ref], chain + (node.name,))
        state[node.name] = 2
        ordered.append(node)

    for node in nodes:
        visit(node, ())
    return ordered


def evaluate_tree(nodes: Sequence[Node], data: Data, n_events: int, source: str = "") -> dict[str, np.ndarray]:
    """Masks of every population of a tree of fixed gates, keyed by name, in the input order."""
    masks: dict[str, np.ndarray] = {}
    for node in dependency_order(nodes, source):
        masks[node.name] = population_mask(node.gate, data, masks, node.parent, n_events, node.complement)
    return {n.name: masks[n.name] for n in nodes}
