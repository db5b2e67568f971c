"""The stateful core every optimizer class shares: ``fusedoptim.Optimizer`` (NumPy arrays) and
``fusedoptim.torch.Optimizer`` (torch tensors) are two layers over it.

The core owns what a step means: each param's step count and host-side state (NAdam's
``mu_product``), buckets of params that share a dtype and those caller-owned arguments (one
kernel call each), the starting values of new state, and the order that makes bad input change
nothing: every bucket of every group is checked before any is stepped, and new state is kept
only once the step has been taken. A layer supplies only how its tensors are stored and viewed.
"""

from __future__ import annotations

import functools

from . import _backends


class Stateful:
    """Mixin of the optimizer classes. ``spec`` (an ``_rules.OptimizerSpec``) is set per class;
    the layer provides ``state`` (key -> dict) and the methods under "What a layer provides"."""

    spec = None
    backend = None  # the NumPy layer's choice; fusedoptim.torch always uses the default

    # --- What a layer provides ---

    def _steps_taken(self, state):
        """How many steps the param with this (non-empty) state has taken."""
        return int(state["step"])

    def _host_value(self, state, name):
        return float(state[name])

    def _new_state(self, param, fill):
        """A new state buffer shaped like ``param``, filled with ``fill``."""
        raise NotImplementedError

    def _order(self, param):
        """The dims of ``param`` in memory order, when it is not C-contiguous (None: as it is)."""
        return None

    def _writable(self, tensor, order, write_backs):
        """An array of ``tensor``'s memory in ``order`` that the kernel can write, or a contiguous
        copy to be written back: then a function that does so is appended to ``write_backs``."""
        return tensor

    def _readable(self, grad, order):
        return grad

    def _record(self, key, new_states, count, host_states):
        """Records a step taken: the param's newly created state buffers, its step count, its host state."""
        state = self.state.setdefault(key, {})
        state.update(new_states)
        state["step"] = count
        state.update(host_states)

    # --- The core ---

    def _hyper(self, group):
        """The plan's hyperparameters from a param group; the optimizer's pinned ones win."""
        hyper = {name: group[name] for name in self.spec.rule.hyper if name in group}
        hyper.update(self.spec.fixed)
        return hyper

    def _step_args(self, state):
        """The caller-owned arguments of the next step of a param with ``state`` (None or empty: a
        param that has not stepped): its 1-based number and its host state's values."""
        rule = self.spec.rule
        if not state:
            return 1, tuple(rule.host_states.values())
        return self._steps_taken(state) + 1, tuple(self._host_value(state, name) if name in state else start
                                                  for name, start in rule.host_states.items())

    def _plan(self, hyper, count=1, host=None):
        """The plan of a step with these caller-owned arguments (by default, a first step's)."""
        rule = self.spec.rule
        args = {"step": count} if rule.step else {}
        args.update(zip(rule.host_states, host or rule.host_states.values()))
        return rule.plan(**args, **hyper)

    def _initial_fill(self, name, hyper):
        initial = self.spec.rule.initial.get(name)
        return hyper[initial] if initial else 0.0

    def _take_step(self, groups):
        """One step. ``groups`` holds, for each param group, its hyperparameters (``_hyper``) and
        ``(key, param, grad)`` for each of its params that has a grad."""
        rule = self.spec.rule
        work = []  # per bucket: its step, then what to record once it has been taken
        for hyper, members in groups:
            buckets = {}
            for key, param, grad in members:
                state = self.state.get(key)
                count, host = self._step_args(state)
                buckets.setdefault((param.dtype, count, host), []).append((key, param, grad, state))
            if not buckets:
                self._plan(hyper)  # still reject bad hyperparameters
            for (_, count, host), bucket in buckets.items():
                plan = self._plan(hyper, count, host)
                params, grads, states, created, write_backs = [], [], [[] if used else None for used in plan.uses], [], []
                for key, param, grad, state in bucket:
                    order = self._order(param)
                    new = {}
                    for slot, spec in zip(states, rule.states):
                        if slot is None:
                            continue
                        buffer = state.get(spec.name) if state else None
                        if buffer is None:
                            buffer = new[spec.name] = self._new_state(param, self._initial_fill(spec.name, hyper))
                        slot.append(self._writable(buffer, order, write_backs))
                    params.append(self._writable(param, order, write_backs))
                    grads.append(self._readable(grad, order))
                    created.append((key, new))
                work.append(((rule, plan, params, grads, tuple(states)), count, plan, created, write_backs))
        if len(work) == 1:  # one call checks and steps at once, and changes nothing when it raises
            steps = [functools.partial(_backends.step, self.backend, *work[0][0])]
        else:
            steps = [_backends.prepare(self.backend, *args) for args, *_ in work]
        for take, (_, count, plan, created, write_backs) in zip(steps, work):
            take()
            for write_back in write_backs:
                write_back()
            for key, new in created:
                self._record(key, new, count, plan.host_states)
