"""The stateful core every optimizer class shares: ``fusedoptim.Optimizer`` (NumPy arrays) and
``fusedoptim.torch.Optimizer`` (torch tensors) are two layers over it.

The core owns what a step means: each param's step count and host-side state (NAdam's
``mu_product``), buckets of params that share a dtype and those caller-owned arguments (one
kernel call each), the starting values of new state, and the order that makes bad input change
nothing: every bucket of every group is checked before any is stepped, and new state is kept
only once the step has been taken. A layer supplies only how its tensors are stored and viewed.
Per-param work is done a whole group at a time: a step of hundreds of small tensors must not
cost a Python call per tensor.
"""

from __future__ import annotations

from . import _backends


class Stateful:
    """Mixin of the optimizer classes. ``spec`` (an ``_rules.OptimizerSpec``) is set per class;
    the layer provides ``state`` (key -> dict) and the methods under "What a layer provides"."""

    spec = None
    backend = None  # the NumPy layer's choice; fusedoptim.torch always uses the default
    _viewed = True  # the kernel needs views of the layer's tensors (False: they are its arrays)

    # --- What a layer provides ---

    def _steps_taken(self, entries):
        """For each state entry (None or empty for a param that has not stepped), its steps so far."""
        return [entry["step"] if entry else 0 for entry in entries]

    def _host_values(self, entries):
        """For each state entry, the values of the rule's host states before this step."""
        host = self.spec.rule.host_states
        if not host:
            return [()] * len(entries)
        return [tuple(float(entry[name]) if entry and name in entry else start for name, start in host.items())
                for entry in entries]

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

    def _record(self, keys, entries, created, count, host_states):
        """Records a step taken by a bucket: each param's newly created state buffers (``created``,
        None when there are none), its step count, now ``count``, and its host state."""
        if created is not None:
            entries = [self.state.setdefault(key, {}) for key in keys]
            for entry, new in zip(entries, created):
                entry.update(new)
        for entry in entries:
            entry["step"] = count
            if host_states:
                entry.update(host_states)

    # --- The core ---

    def _hyper(self, group):
        """The plan's hyperparameters from a param group; the optimizer's pinned ones win."""
        hyper = {name: group[name] for name in self.spec.rule.hyper if name in group}
        hyper.update(self.spec.fixed)
        return hyper

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
        three lists over its params that have a grad: their keys in ``state``, the params, the grads."""
        work = []  # per bucket: its plan and count, its operands, then what to record once taken
        for hyper, keys, params, grads in groups:
            entries = list(map(self.state.get, keys))
            steps, hosts = self._steps_taken(entries), self._host_values(entries)
            if len(set(steps)) == 1 and len(set(hosts)) == 1 and len({param.dtype for param in params}) == 1:
                buckets = {(steps[0], hosts[0]): (keys, params, grads, entries)}  # the usual step: one bucket
            else:
                buckets = {}
                for member in zip(keys, params, grads, entries, steps, hosts):
                    bucket = buckets.setdefault((member[1].dtype, *member[4:]), ([], [], [], []))
                    for column, value in zip(bucket, member):
                        column.append(value)
            if not buckets:
                self._plan(hyper)  # still reject bad hyperparameters
            for key, bucket in buckets.items():
                count, host = key[-2] + 1, key[-1]
                plan = self._plan(hyper, count, host)
                work.append((plan, count, bucket, *self._operands(*bucket, plan, hyper)))
        rule = self.spec.rule
        if len(work) == 1:  # one call checks and steps at once, and changes nothing when it raises
            plan, _, _, params, grads, states, _, _ = work[0]
            _backends.step(self.backend, rule, plan, params, grads, states)
            return self._taken(*work[0])
        steps = [_backends.prepare(self.backend, rule, plan, params, grads, states)
                 for plan, _, _, params, grads, states, _, _ in work]
        for take, done in zip(steps, work):
            take()
            self._taken(*done)

    def _taken(self, plan, count, bucket, params, grads, states, created, write_backs):
        """What follows a bucket's kernel call: write-backs, then the record of the step."""
        for write_back in write_backs:
            write_back()
        self._record(bucket[0], bucket[3], created, count, plan.host_states)

    def _operands(self, keys, params, grads, entries, plan, hyper):
        """A bucket's arrays for the kernel: (params, grads, states per slot, each param's newly
        created state buffers (None: it had them all), write-backs)."""
        rule = self.spec.rule
        if not self._viewed and None not in entries:
            used = [s.name for s, on in zip(rule.states, plan.uses) if on]
            try:  # the usual step: every param has its state, stored as the kernel takes it
                columns = [[entry[name] for entry in entries] for name in used]
            except KeyError:
                columns = None
            if columns is not None and not any(type(None) in map(type, column) for column in columns):
                column = iter(columns)
                return params, grads, tuple(next(column) if on else None for on in plan.uses), None, []
        arrays, readable, states, created, write_backs = [], [], [[] if on else None for on in plan.uses], [], []
        for param, grad, entry in zip(params, grads, entries):
            order = self._order(param)
            new = {}
            for slot, state in zip(states, rule.states):
                if slot is None:
                    continue
                buffer = entry.get(state.name) if entry else None
                if buffer is None:
                    buffer = new[state.name] = self._new_state(param, self._initial_fill(state.name, hyper))
                slot.append(self._writable(buffer, order, write_backs))
            arrays.append(self._writable(param, order, write_backs))
            readable.append(self._readable(grad, order))
            created.append(new)
        return arrays, readable, tuple(states), created, write_backs
