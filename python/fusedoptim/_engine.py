"""The stateful core every optimizer class shares: ``fusedoptim.Optimizer`` (NumPy arrays) and
``fusedoptim.torch.Optimizer`` (torch tensors) are two layers over it.

The core owns what a step means: each param's step count and host-side state (NAdam's
``mu_product``, ASGD's ``eta`` and ``mu``), buckets of params that share a dtype and those caller-owned arguments (one
kernel call each), the starting values of new state, and the order that makes a step all or
nothing: every bucket of every group is checked (one native call for the usual single bucket,
``_backends.check`` otherwise) before any is stepped, new state is kept only once the step
has been taken, and a Ctrl-C cannot come between the kernels and the record of the step. A
layer supplies only how its tensors are stored and viewed, and how it names them in errors.
Per-param work is done a whole group at a time: a step of hundreds of small tensors must not
cost a Python call per tensor.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import numpy as np

from . import _backends, _norms
from ._backends import Call, deferred_interrupts
from ._rules import flag, immutable
from ._storage import Precision, rounding_key
from ._validate import find_overlap, found_inf_value, grad_scale_value, rounding_mode, seed_value

# The state names of the param modes' buffers (beside the rule's states, in each param's state).
MASTER, COMPENSATION = "master_param", "compensation"


class Stateful:
    """Mixin of the optimizer classes. ``spec`` (an ``_rules.OptimizerSpec``) is set per class;
    the layer provides ``state`` (key -> dict) and the methods under "What a layer provides"."""

    spec = None
    backend = None  # the NumPy layer's choice; fusedoptim.torch always uses the default
    _float32_states = False  # state_dtype="float32": new state in float32, whatever the param's dtype
    _master_weights = False  # a float32 master copy per param (state MASTER)
    _rounding = "nearest"  # how params are stored (_storage); "kahan" keeps state COMPENSATION
    _seed = 0  # stochastic rounding's seed
    _unsupported = ()  # the layer's flags that must be off (torch's), read from a group as its hyperparameters
    _viewed = True  # the kernel needs views of the layer's tensors (False: they are its arrays)
    _shared_memory = False  # params may share memory (torch): then they step one after another
    skip_nonfinite = False  # the NumPy layer's option: a step whose grads hold inf or NaN changes nothing

    # --- What a layer provides ---

    def _steps_taken(self, entries):
        """For each state entry (None or empty for a param that has not stepped), its steps so far."""
        return [entry["step"] if entry else 0 for entry in entries]

    def _host_values(self, entries, hyper):
        """For each state entry, the values of the rule's host states before this step."""
        host = self.spec.rule.host_states
        if not host:
            return [()] * len(entries)
        start = self._host_start(hyper)
        return [tuple(float(entry[name]) if entry and name in entry else value for name, value in zip(host, start))
                for entry in entries]

    def _host_start(self, hyper):
        """The host states of a param that has not stepped (see ``Rule.host_start``), as the layer keeps them."""
        return self.spec.rule.host_start(_at_step(hyper, 1))  # ASGD's eta starts at the first step's lr

    def _new_states(self, params, fill, name=None):
        """New buffers for state ``name`` of ``params`` (dtype: ``_state_dtype``), each shaped and
        laid out like its param, filled with ``fill``, or holding its param's values when ``fill``
        is None; views of one buffer where the layer can (``_memory.packed_empty``)."""
        raise NotImplementedError

    def _indices(self, keys):
        """Each param's position across all groups (stochastic rounding's param index)."""
        return keys

    def _order(self, param):
        """The dims of ``param`` in memory order, when it is not C-contiguous (None: as it is)."""
        return None

    def _writable(self, tensor, order, copies):
        """An array of ``tensor``'s memory in ``order`` that the kernel can write; or, where it
        has none, one of a contiguous copy, listed in ``copies`` as (tensor view, copy, the
        copy's array) to be filled right before the kernel and written back right after."""
        return tensor

    def _memory(self, view):
        """An array of a (non-dense) view's own memory, for overlap checks."""
        return view

    def _readable(self, grad, order):
        return grad

    def _grad_reader(self, params, orders):
        """How the grads of ``params`` (in ``orders``) are read at each prepared step: a function
        of the grads returning ``_readable`` of each."""
        return lambda grads: list(map(self._readable, grads, orders))

    def _storage(self, tensors):
        """What tells whether the memory behind ``tensors`` is still what their arrays, made at an
        earlier step, view (torch: each tensor's data pointer, which ``p.data = x`` changes); None:
        the layer cannot tell, and its arrays are made afresh every step."""
        return None

    def _namer(self, keys):
        """``name(arg, k)``: how errors name operand k of argument ``arg`` of a call over these params."""
        return None

    def _reduction(self, params):
        """For a two-pass rule (``Rule.sums``), what a call over ``params`` does with each tensor's
        sums between the passes (``reduce`` of ``_backends.step``); None: they are the whole tensors'."""
        return None

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

    def _set_state_dtype(self, state_dtype):
        """The layer option ``state_dtype``: None keeps each state in its param's dtype, as torch
        does; float32 (``"float32"``, ``np.float32``, ``torch.float32``) keeps every state in float32."""
        if state_dtype is not None and not _is_float32(state_dtype):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (None: each param's dtype; or float32)")
        self._float32_states = state_dtype is not None

    def _state_dtype(self, param_dtype, name=None):
        """The NumPy dtype of a new state ``name`` of a ``param_dtype`` (NumPy dtype) param: a
        master is float32, a compensation is stored as its param is, the rule's states as
        ``state_dtype`` says."""
        if name == MASTER:
            return np.dtype(np.float32)
        if name == COMPENSATION:
            return param_dtype
        return np.dtype(np.float32) if self._float32_states else param_dtype

    def _set_precision(self, master_weights, rounding, seed):
        """The layer options ``master_weights``, ``rounding`` and ``seed`` (_storage's param modes)."""
        self._master_weights = flag("master_weights", master_weights)
        self._rounding = rounding_mode(rounding)
        self._seed = seed_value(seed)
        if self._master_weights and self._rounding != "nearest":
            raise ValueError(f"Invalid rounding: {rounding!r} with master_weights=True (the param is the master "
                             f"rounded to nearest)")

    def _check_modes(self, dtypes, where):
        """Rejects params whose dtypes (NumPy dtype names) the chosen param modes cannot step."""
        needs = [(self._master_weights, "master_weights=True", ("bfloat16", "float16")),
                 (self._rounding == "kahan", "rounding='kahan'", ("bfloat16", "float16")),
                 (self._rounding == "stochastic", "rounding='stochastic'", ("bfloat16",))]
        for on, option, allowed in needs:
            bad = [d for d in dtypes if d not in allowed]
            if on and bad:
                raise ValueError(f"Invalid {option.split('=')[0]}: {option} is for {' and '.join(allowed)} params; "
                                 f"{where} is {bad[0]}")

    def _mode_states(self):
        """The state names the param modes keep per param."""
        return (MASTER,) * self._master_weights + (COMPENSATION,) * (self._rounding == "kahan")

    def _hyper(self, group):
        """The plan's hyperparameters from a param group; the optimizer's pinned ones win."""
        hyper = {name: group[name] for name in self.spec.rule.hyper if name in group}
        hyper.update(self.spec.fixed)
        return hyper

    def _group_hyper(self, index, group):
        """``_hyper(group)`` of group ``index``, remembered while the group holds the very same
        values: making it anew at each step costs more than a small tensor's kernel. The plan still
        checks the values at each step. A value that can change in place (a tensor lr, a list) is
        read afresh each time."""
        memo = self.__dict__.get("_hypers")
        if memo is None:
            memo = self.__dict__["_hypers"] = _Hypers((*self.spec.rule.hyper, *self._unsupported))
        try:
            values = memo.read(group)
        except KeyError:  # (a group without one of them: the plan's default)
            values = tuple(map(group.get, memo.names))
        last = memo.get(index)
        if last is not None and last.group is group and all(map(operator.is_, values, last.values)):
            return last.hyper
        hyper = self._hyper(group)
        if all(map(immutable, values)):
            memo[index] = _Remembered(group, values, hyper)
        return hyper

    def _group_plan(self, index, group, count):
        """``_plan`` of group ``index`` at step ``count``, for a rule without host state: while the
        group holds the values ``_group_hyper`` remembers, from their schedule (``Rule.schedule_of``),
        checked once (a rule that counts no steps plans once)."""
        hyper, rule = self._group_hyper(index, group), self.spec.rule
        last = self._hypers.get(index)
        if last is None or last.hyper is not hyper or rule.host_states:
            return self._plan(hyper, count, ())
        if last.at is None:
            last.at = rule.schedule_of(hyper)
        return last.at(count) if rule.step else last.at()

    def _plan(self, hyper, count=1, host=None):
        """The plan of a step with these caller-owned arguments (by default, a first step's): a
        plan takes the step, then the host states, positionally. An ``lr`` that is callable is a
        schedule, a function of the step number: each param's lr is its value at the step the param
        takes (1 for its first), so it needs no state of its own and resumes with the step counts."""
        rule = self.spec.rule
        hyper = _at_step(hyper, count)
        host = self._host_start(hyper) if host is None else host
        return rule.plan(count, *host, **hyper) if rule.step else rule.plan(*host, **hyper)

    def _state_name(self, arg):
        """The state a functional argument holds (``exp_avgs`` -> ``exp_avg``), for error messages."""
        return next(s.name for s in self.spec.rule.states if s.arg == arg)

    def _initial_fill(self, name, hyper):
        initial = self.spec.rule.initial.get(name)
        return _at_step(hyper, 1)[initial] if initial else 0.0  # Rprop's step_size starts at the first step's lr

    def _check_group(self, hyper, dtypes):
        """What a new param group must pass before it is added: hyperparameters the rule accepts,
        scalars and starting values that params of these dtypes can hold."""
        first = _at_step(hyper, 1)  # a schedule checked once, at its first step
        plan = self._plan(first)
        for dtype in dtypes:
            _backends.compute_scalars(self.spec.rule, plan, dtype)  # lr=1e300 cannot step float32 params
            state = self._state_dtype(dtype)
            for name in self.spec.rule.initial.values():
                with np.errstate(over="ignore"):
                    if not np.isfinite(state.type(first[name])):
                        raise ValueError(f"Invalid {name}: {first[name]:g} is not finite in {state.name}, the dtype "
                                         f"of the state it starts")

    def _take_step(self, groups, grad_scale=None, found_inf=False):
        """One step. ``groups`` holds, for each param group, its hyperparameters (``_hyper``) and
        three lists over its params that have a grad: their keys in ``state``, the params, the grads.
        Grads are divided by ``grad_scale``; with ``found_inf`` the step is checked and nothing changes.
        Returns False when it was skipped (``found_inf``, or ``skip_nonfinite`` and a grad held inf
        or NaN), else True."""
        grad_scale, skip = grad_scale_value(grad_scale), found_inf_value(found_inf)
        work, rule = [], self.spec.rule
        for index, (hyper, keys, params, grads) in enumerate(groups):
            entries = list(map(self.state.get, keys))
            steps, hosts = self._steps_taken(entries), self._host_values(entries, hyper)
            members = keys, params, grads, entries
            if len(set(steps)) == 1 and len(set(hosts)) == 1 and len({param.dtype for param in params}) == 1:
                buckets = {(steps[0], hosts[0]): (*members, None)}  # the usual step: one bucket
            else:  # each bucket also lists its members' positions in the group
                buckets = {}
                for member in zip(*members, range(len(keys)), steps, hosts):
                    bucket = buckets.setdefault((member[1].dtype, *member[5:]), ([], [], [], [], []))
                    for column, value in zip(bucket, member):
                        column.append(value)
            if not buckets:
                self._plan(hyper)  # still reject bad hyperparameters
            plans = [self._plan(hyper, key[-2] + 1, key[-1]) for key in buckets]
            whole = None
            if (len(buckets) > 1 and self._viewed and len({(key[0], key[-1]) for key in buckets}) == 1
                    and len({plan.uses for plan in plans}) == 1):
                # Params a step behind the others (skipped while their grad was None): the group is
                # prepared as one, so that the next steps find it ready (a layer may plan it), and each
                # count's bucket steps its part of it.
                whole = self._prepared_operands(index, params, grads, entries, plans[0], hyper)
            for (key, (keys, params, grads, entries, positions)), plan in zip(buckets.items(), plans):
                count = key[-2] + 1
                if whole is not None:
                    operands = _part(whole, positions)
                elif len(buckets) == 1 and self._viewed:  # (a layer that passes its own arrays has nothing to prepare)
                    operands = self._prepared_operands(index, params, grads, entries, plan, hyper)
                else:
                    operands = self._operands(params, grads, entries, plan, hyper)
                arrays, readable, states, modes, created, copies, memory = operands
                rounding_keys = None
                if self._rounding == "stochastic":  # hashed per param from the seed, its step and its position
                    rounding_keys = [rounding_key(self._seed, count, i) for i in self._indices(keys)]
                precision = Precision(self._rounding, modes.get(MASTER), modes.get(COMPENSATION), rounding_keys,
                                      grad_scale)
                call = Call(plan, arrays, readable, states, self._namer(keys),
                            self._reduction(params) if rule.sums else None, precision)
                work.append(_Bucket(call, count, keys, entries, created, copies, memory))
        if not work:
            return True
        sequential = self._shared_memory and _shares_memory(work)
        if sequential:  # as torch's for-loop steps them: one after another, each seeing those before
            work = [one for bucket in work for one in bucket.one_by_one()]
        if skip:  # checked as a step would be, then nothing: no param, state or count changes
            _backends.check(_backends.resolve(self.backend), rule, [bucket.call for bucket in work],
                            across=not sequential)
            return False
        with deferred_interrupts():  # a Ctrl-C cannot split the kernels, the write-backs and the record
            if len(work) == 1 and not self.skip_nonfinite:  # the usual step: one native call checks and steps it
                bucket = work[0]
                _fill(bucket.copies)
                _backends.step(self.backend, rule, *bucket.call)
                self._taken(bucket)
                return True
            backend = _backends.resolve(self.backend)
            ready = _backends.check(backend, rule, [bucket.call for bucket in work], across=not sequential)
            # GradScaler's rule: one inf or NaN in any grad skips the whole step, after it was checked.
            if self.skip_nonfinite and not _norms.all_finite([grad for args in ready for grad in args[2]], backend):
                return False
            for args, bucket in zip(ready, work):
                _fill(bucket.copies)
                _backends.run(backend, rule, *args)
                self._taken(bucket)
        return True

    def _taken(self, bucket):
        _write_back(bucket.copies)
        self._record(bucket.keys, bucket.entries, bucket.created, bucket.count, bucket.call.plan.host_states)

    def _prepared_operands(self, index, params, grads, entries, plan, hyper):
        """``_operands`` of the usual step (group ``index`` in one bucket), with the arrays of the
        params and states of its last step when nothing they view has changed since: the same
        param and state objects in the same order, the same used states and the same memory (see
        ``_storage``). Only the grads are read again: keeping last step's would keep alive the
        memory ``zero_grad(set_to_none=True)`` frees. The native call still checks every operand
        each step against the grads; a prepared array is the one a fresh step would make."""
        prepared = self.__dict__.setdefault("_prepared", _Prepared())
        used = [state.name for state, on in zip(self.spec.rule.states, plan.uses) if on] + list(self._mode_states())
        try:  # the params, then each used slot's buffers and the param modes' (when every param has them all)
            held = list(params) + [entry[name] for name in used for entry in entries]
        except (TypeError, KeyError):  # the step creates state
            held, storage = None, None
        else:
            storage = self._storage(held)
        last = prepared.get(index)
        if (storage is not None and last is not None and last.uses == plan.uses and len(last.held) == len(held)
                and all(map(operator.is_, last.held, held)) and last.storage == storage):
            return last.arrays, last.read(grads), last.states, last.modes, None, [], last.memory
        operands = arrays, _, states, modes, created, copies, memory = self._operands(params, grads, entries, plan, hyper)
        if storage is None or copies or any(created):
            prepared.pop(index, None)
        else:
            read = self._grad_reader(params, list(map(self._order, params)))
            prepared[index] = _Ready(plan.uses, held, storage, read, arrays, states, modes, memory)
        return operands

    def _forget_prepared(self):
        """Drops the prepared operands (a layer that replaced its state: they would keep the old alive)."""
        self.__dict__.pop("_prepared", None)

    def _operands(self, params, grads, entries, plan, hyper):
        """A bucket's arrays for the kernel: (params, grads, states per slot, the param modes'
        arrays by state name, each param's newly created state buffers (None: it had them all),
        copies to fill and write back, as (tensor, copy, position in the bucket), and each param's
        own memory (see _Bucket))."""
        rule = self.spec.rule
        names = [state.name if on else None for state, on in zip(rule.states, plan.uses)] + list(self._mode_states())
        if not self._viewed and None not in entries:
            try:  # the usual step: every param has its state, stored as the kernel takes it
                columns = [[entry[name] for entry in entries] if name else None for name in names]
            except KeyError:
                columns = None
            if columns is not None and not any(c is not None and type(None) in map(type, c) for c in columns):
                return (params, grads, tuple(columns[:len(rule.states)]),
                        dict(zip(names[len(rule.states):], columns[len(rule.states):])), None, [], [])
        arrays, readable, copies, memory = [], [], [], []
        created = [{} for _ in params]
        for name in filter(None, names):  # each slot's new buffers at once: a column of one buffer
            missing = [k for k, entry in enumerate(entries) if (entry.get(name) if entry else None) is None]
            fill = None if name == MASTER else self._initial_fill(name, hyper)
            if missing:
                for k, buffer in zip(missing, self._new_states([params[k] for k in missing], fill, name)):
                    created[k][name] = buffer
        columns = [[] if name else None for name in names]
        for k, (param, grad, entry, new) in enumerate(zip(params, grads, entries, created)):
            order = self._order(param)
            copies_of = []
            for column, name in zip(columns, names):
                if column is None:
                    continue
                buffer = new[name] if name in new else entry[name]
                column.append(self._writable(buffer, order, copies_of))
            array = self._writable(param, order, copies_of)
            arrays.append(array)
            if self._shared_memory:  # a param stepped through a copy: its own memory is the copied view's
                copied = copies_of and copies_of[-1][2] is array
                memory.append(self._memory(copies_of[-1][0]) if copied else array)
            readable.append(self._readable(grad, order))
            copies += [(tensor, copy, k) for tensor, copy, _ in copies_of]
        modes = dict(zip(names[len(rule.states):], columns[len(rule.states):]))
        return arrays, readable, tuple(columns[:len(rule.states)]), modes, created, copies, memory


def _counted(change):
    """A dict method that counts as an edit of the dict's owner (see ``State``)."""

    def counting(self, *args, **kwargs):
        owner = self._owner
        if owner is not None:
            owner.edits += 1
        return change(self, *args, **kwargs)

    counting.__name__ = change.__name__
    return counting


class Entry(dict):
    """A param's state (name -> buffer or count) whose every change counts in its owner's ``edits``."""

    _owner = None  # (also while a copy or an unpickled one is filled, before its attributes are set)
    __setitem__, __delitem__, __ior__ = map(_counted, (dict.__setitem__, dict.__delitem__, dict.__ior__))
    pop, popitem, clear, update, setdefault = map(_counted, (dict.pop, dict.popitem, dict.clear, dict.update,
                                                           dict.setdefault))


class State(Entry):
    """An optimizer's ``state``: key -> ``Entry``. ``edits`` counts every change to it and to the
    entries it made (an entry added, replaced or dropped, a state buffer replaced, a count set): a
    step planned before a change is not taken after it, and telling so costs one comparison, where
    looking at each entry would cost more than a small tensor's kernel. (An entry a user puts in as
    a plain dict is stepped, but never planned.)"""

    def __init__(self, entries=()):
        super().__init__()
        self._owner, self.edits = self, 0
        for key, values in dict(entries).items():  # (a user's own key may hold anything)
            self[key] = self.entry(values) if isinstance(values, dict) else values

    def entry(self, values=()):
        """A new entry of this state, holding ``values``."""
        entry = Entry(values)
        entry._owner = self
        return entry

    def owns(self, entries):
        """Whether every one of ``entries`` is an entry this state made."""
        return all(type(entry) is Entry and entry._owner is self for entry in entries)

    def setdefault(self, key, default=None):
        return super().setdefault(key, self.entry() if type(default) is dict and not default else default)


class _Prepared(dict):
    """Group index -> its ``_Ready`` operands. Never copied or pickled with its optimizer: a copy
    of an optimizer has params of its own, and prepares its own. A layer may keep a plan of its
    steps made from them (``plan``), and what it was last made from (``made_from``)."""

    plan = None
    made_from = None

    def __reduce__(self):
        return _Prepared, ()


class _Hypers(dict):
    """Group index -> its ``_Remembered``. Never copied or pickled with its optimizer (a copy has
    groups of its own)."""

    def __init__(self, names):
        super().__init__()
        self.names = names
        # A group's values of them, as a tuple (itemgetter of one name returns the value alone).
        self.read = operator.itemgetter(*names) if len(names) > 1 else lambda group: (group[names[0]],)

    def __reduce__(self):
        return _Hypers, (self.names,)


class _Remembered:
    """A group, its values of ``_Hypers.names``, ``Stateful._hyper`` of them, and their schedule (once made)."""

    __slots__ = ("group", "values", "hyper", "at")

    def __init__(self, group, values, hyper):
        self.group, self.values, self.hyper, self.at = group, values, hyper, None


class _Ready(NamedTuple):
    """The operands of a group's last step (see ``Stateful._prepared_operands``)."""

    uses: tuple  # the plan's used state slots
    held: list  # the params, then the used states' buffers slot by slot: the objects the arrays view
    storage: object  # the layer's ``_storage`` of them
    read: object  # the grads -> their arrays, each in its param's memory order (``_grad_reader``)
    arrays: list
    states: tuple
    modes: dict  # the param modes' arrays by state name (master weights, Kahan compensation)
    memory: list


class _Bucket(NamedTuple):
    """One kernel call of a step, and what to record once it has been taken."""

    call: Call
    count: int  # the step number every param of the call takes
    keys: list
    entries: list  # their state entries before the step (None for new params)
    created: list | None  # per param, the state buffers this step creates (None: there are none)
    copies: list  # (tensor, contiguous copy, position) to fill before the kernel and write back after
    memory: list  # each param's own memory as an array (when params may share it), else empty

    def one_by_one(self):
        """The call split into one call per param, in order."""
        call = self.call
        p = call.precision
        for k in range(len(call.params)):
            states = tuple(None if slot is None else [slot[k]] for slot in call.states)
            name = call.name and (lambda arg, _, k=k: call.name(arg, k))
            reduce = call.reduce and functools.partial(_one_row, call.reduce, k, len(call.params))
            created = None if self.created is None else [self.created[k]]
            precision = p._replace(**{field: [getattr(p, field)[k]] for field in ("masters", "compensations", "keys")
                                      if getattr(p, field) is not None})
            yield _Bucket(Call(call.plan, [call.params[k]], [call.grads[k]], states, name, reduce, precision),
                          self.count, [self.keys[k]], [self.entries[k]], created,
                          [copy for copy in self.copies if copy[2] == k],
                          self.memory[k:k + 1])


def _part(operands, positions):
    """The operands (``Stateful._operands``) of the params at ``positions`` among those of ``operands``."""
    arrays, readable, states, modes, created, copies, memory = operands
    where = {k: i for i, k in enumerate(positions)}

    def pick(column):
        return column if column is None or not column else [column[k] for k in positions]

    return (pick(arrays), pick(readable), tuple(map(pick, states)), {name: pick(c) for name, c in modes.items()},
            pick(created), [(tensor, copy, where[k]) for tensor, copy, k in copies if k in where], pick(memory))


def _at_step(hyper, count):
    """``hyper`` with a schedule ``lr`` (a callable) replaced by its value at step ``count``."""
    lr = hyper.get("lr")
    return {**hyper, "lr": lr(count)} if callable(lr) else hyper


def _is_float32(dtype):
    """Whether ``dtype`` names float32, in NumPy's or torch's words (without importing torch)."""
    if type(dtype).__module__ == "torch":
        return str(dtype) == "torch.float32"
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:
        return False


def _one_row(reduce, k, n, sums):
    """``reduce`` of a call over n params, for the call of its param k alone: the other rows are zero."""
    rows = np.zeros((n, sums.shape[1]))
    rows[k] = sums[0]
    reduce(rows)
    sums[0] = rows[k]


def _shares_memory(work):
    """Whether two params of the step share memory (their own, not the copies they step through)."""
    memory = [array for bucket in work for array in bucket.memory]
    return len(memory) > 1 and find_overlap(memory) is not None


def _fill(copies):
    for tensor, copy, _ in copies:
        copy.copy_(tensor)


def _write_back(copies):
    for tensor, copy, _ in copies:
        tensor.copy_(copy)
