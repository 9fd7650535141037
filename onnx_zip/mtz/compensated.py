"""Error-compensating MTZ for one layer (mtz-method §10): refits, shared fits and pair costs.

Every neuron is fitted by ridge-regularised least squares so that its output on the ZIPPED model's
input ``x̃_t`` matches the original neuron's output on the original input ``x_t``, from the moments
``G_t = E[x̃ x̃ᵀ]``, ``C_t = E[x̃ xᵀ]``, ``H_t = E[x xᵀ]`` (:mod:`onnx_zip.mtz.comp_stats`). Task t's
zipped input is ``[shared (S) ; own_t (E_t) ; 1]``; ``w̄`` is the original row moved into those
coordinates (:func:`~onnx_zip.mtz.comp_embed.embed_rows`), the ridge target.

Task-specific neuron ``w`` of task t (heads included), ``λ_t = ρ·mean(diag G_t)``, ``K_t = (G_t + λ_t I)⁻¹``,
``y = C_t w + λ_t w̄``:

    ŵ = K_t y          r_t(w) = wᵀ H_t w + λ_t ‖w̄‖² − yᵀ K_t y

``r_t`` is the minimum of ``E[(ŵᵀx̃ − wᵀx)²] + λ_t ‖ŵ − w̄‖²`` (squared output error plus ridge).

Shared neuron joining one neuron ``w_t`` per task of a group ``T``: parameters ``θ = [s (S) ; bias ;
u_t1 (E_t1) ; u_t2 ; …]`` (``θ[:S+1]`` is the shared row, bias last; ``u_t`` task t's "inter" weights);
``P_t`` places ``x̃_t``'s coordinates into θ's. ``Ĝ = Σ_t P_t G_t P_tᵀ``, ``λ = Σ_t λ_t`` (a group of
identical tasks is then fitted exactly like one), ``K = (Ĝ + λI)⁻¹``; the prior ``θ₀ = Σ_t p_t`` is the
paper's merge of the shared parts, ``(Σ_t G_t^{sb})⁻¹ Σ_t G_t^{sb} w̄_t^{sb}`` over the shared features and
the bias (``sb``; computed as ``p_t = (I/m + Σ⁺(G_t^{sb} − Σ/m)) w̄_t^{sb}``, which keeps unreached
directions at the plain mean), with each task's own weights ``w̄_t^{own}`` as its inter weights; with
``v_t = P_t C_t w_t + λ p_t``:

    θ* = K Σ_t v_t      R = Σ_t w_tᵀ H_t w_t + λ ‖Σ_t p_t‖² − (Σ_t v_t)ᵀ K (Σ_t v_t)

Pair (group) cost ``Δ = R − Σ_t r_t``: the extra regularised squared output error of sharing over
refitting each neuron alone. With ``ρ = 0`` these are §10's formulas exactly; the ridge toward the
priors (instead of toward zero) makes the two checks of §10 exact for every ``ρ``: a permuted copy costs
0 and is recovered exactly, and with ``x̃ = x`` and every feature shared ``θ* = (H_A + H_B)⁻¹(H_A a + H_B b)``
and ``Δ = (a − b)ᵀ H_A (H_A + H_B)⁻¹ H_B (a − b)`` (twice the paper's cost). Δ ≥ 0 holds exactly for
``ρ = 0``; the ridge can make it slightly negative (order ρ). All pairs come from matrix products:
``(v_a + v_b)ᵀK(v_a + v_b) = v_aᵀKv_a + v_bᵀKv_b + 2 v_aᵀKv_b``. More than two tasks: groups grow one task
at a time and :meth:`CompensatedLayer.group_costs` gives the marginal cost ``R(g ∪ j) − R(g) − r(j)``.

Within-model merge of neurons ``i, j`` of one task (the next layer sums their columns): one neuron
fitted to both outputs; ``θ* = K_t (y_i + y_j)/2`` and ``Δ = ½[(y_i − y_j)ᵀ K_t (y_i − y_j) − λ_t ‖w̄_i − w̄_j‖²]``
(the same criterion with ``Ĝ = 2G_t``, ``λ = 2λ_t``, prior the average).

Per-channel conv reading: rows ``(N, P, D)``, one vector per kernel tap, every tap fitted with the same
moments (block-diagonal approximation) and the errors summed over taps. The layout repeats the bias at
every tap; here each tap carries ``b/P`` so that the taps' targets add up to the conv output, and the
fitted conv bias is the SUM of the fitted per-tap bias entries; fitted rows are returned with that bias
repeated at every tap, so :func:`~onnx_zip.mtz.layout.channel_rows_to_conv` (mean) reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import where
from onnx_zip.mtz.comp_solve import Stage, TaskTerms, build_stage, prepare_task
from onnx_zip.mtz.comp_stats import CompensationStats

__all__ = ["DEFAULT_RHO", "CompensatedLayer", "SharedFit", "SpecificFit", "TaskLayer"]


DEFAULT_RHO = 1e-2


@dataclass(frozen=True)
class TaskLayer:
    """One task's side of a layer.

    Attributes:
        rows: Original neuron rows ``(N, D)``, or ``(N, P, D)`` in the per-channel reading (bias repeated).
        stats: The task's :class:`~onnx_zip.mtz.comp_stats.CompensationStats` (``G (D̃, D̃)``, ``C (D̃, D)``,
            ``H (D, D)``).
        prior: ``rows`` moved into the zipped coordinates, ``(N, D̃)`` or ``(N, P, D̃)``.
        name: Task name for messages.
    """

    rows: np.ndarray
    stats: CompensationStats
    prior: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class SpecificFit:
    """Refitted task-specific (or within-merged) neurons, in the zipped coordinates of their task.

    Attributes:
        rows: ``(n, D̃)`` or ``(n, P, D̃)`` (per-channel: the conv bias repeated at every tap).
        error: ``(n,)`` squared output error ``E[(ŵᵀx̃ − wᵀx)²]`` (summed over taps, and over both
            merged neurons for a within-model merge).
    """

    rows: np.ndarray
    error: np.ndarray


@dataclass(frozen=True)
class SharedFit:
    """Fitted shared neurons of a group of tasks.

    Attributes:
        shared: ``(k, S+1)`` (``(k, S)`` without bias) or ``(k, P, S+1)``: shared weights, bias last.
        inter: Per task of the group, ``(k, E_t)`` or ``(k, P, E_t)``: its inter weights.
        task_rows: Per task, ``(k, D̃_t)`` or ``(k, P, D̃_t)``: the neuron as task t sees it.
        error: ``(m, k)`` squared output error per task of the group and shared neuron.
        tasks: The group's task indices, in the order of ``inter``, ``task_rows`` and ``error``.
    """

    shared: np.ndarray
    inter: tuple[np.ndarray, ...]
    task_rows: tuple[np.ndarray, ...]
    error: np.ndarray
    tasks: tuple[int, ...]


class CompensatedLayer:
    """The compensated fit of one layer for T ≥ 1 tasks.

    Args:
        tasks: One :class:`TaskLayer` per task, same reading (2-D or 3-D rows with the same ``P``).
        n_shared: ``S``, the shared features at the front of every task's zipped input.
        rho: Relative ridge ρ ≥ 0 (``λ_t = ρ·mean(diag G_t)``); default 1e-2.
        layer: Layer name for messages.

    Raises:
        InputError: Shapes that do not fit the moments, or tasks that disagree.
    """

    def __init__(
        self, tasks: Sequence[TaskLayer], n_shared: int, *, rho: float = DEFAULT_RHO, layer: str | None = None
    ) -> None:
        if not tasks:
            raise InputError(f"{where(layer)}the compensated fit needs at least one task")
        if not np.isfinite(rho) or rho < 0:
            raise InputError(f"{where(layer)}rho must be a finite number ≥ 0, got {rho!r}")
        self.layer = layer
        self.rho = float(rho)
        self.n_shared = int(n_shared)
        self.bias = bool(tasks[0].stats.bias)
        self.taps = 1 if np.ndim(tasks[0].rows) == 2 else int(np.shape(tasks[0].rows)[1])
        self._tasks = [
            prepare_task(t, self.n_shared, self.bias, self.taps, self.rho, f"{where(layer)}task {t.name or i}")
            for i, t in enumerate(tasks)
        ]
        self._stages: dict[tuple[int, ...], Stage] = {}

    # -- task-specific neurons ------------------------------------------------------------------
    @property
    def n_tasks(self) -> int:
        """T."""
        return len(self._tasks)

    def task_terms(self, t: int) -> TaskTerms:
        """The prepared per-task quantities (``y``, ``K_t``, ``r_t``…) of task ``t``."""
        return self._tasks[self._check_task(t)]

    def specific_objective(self, t: int) -> np.ndarray:
        """``(N_t,)`` ``r_t`` of every neuron of task ``t`` (error plus ridge after refitting alone)."""
        return self.task_terms(t).r.copy()

    def refit(self, t: int, index: Sequence[int] | np.ndarray | None = None) -> SpecificFit:
        """Refit task ``t``'s neurons ``index`` (default all) alone: ``ŵ = K_t (C_t w + λ_t w̄)``.

        Returns:
            :class:`SpecificFit` with rows ``(n, D̃_t)`` or ``(n, P, D̃_t)``.
        """
        tt = self.task_terms(t)
        idx = self._neurons(index, tt.n, f"task {t}")
        y = tt.y.reshape(tt.n, self.taps, -1)[idx].reshape(-1, tt.zsize)
        w = tt.w.reshape(tt.n, self.taps, -1)[idx].reshape(-1, tt.w.shape[1])
        fit = tt.solver.solve(y.T).T
        return SpecificFit(rows=self._out(fit, idx.size), error=tt.error(fit, w).reshape(idx.size, self.taps).sum(axis=1))

    # -- shared neurons across tasks --------------------------------------------------------------
    def pair_costs(self, ta: int = 0, tb: int = 1, *, clip: bool = True) -> np.ndarray:
        """``(N_a, N_b)`` cost ``Δ(i, j)`` of sharing neuron ``i`` of task ``ta`` with ``j`` of ``tb``
        (clipped at 0 unless ``clip=False``, as the matchers require)."""
        groups = np.arange(self.task_terms(ta).n)[:, None]
        return self.group_costs(groups, (ta,), tb, clip=clip)

    def group_costs(
        self, groups: np.ndarray, tasks: Sequence[int], new_task: int, *, chunk: int = 4096, clip: bool = True
    ) -> np.ndarray:
        """Marginal cost ``R(g ∪ j) − R(g) − r(j)`` of adding neuron ``j`` of ``new_task`` to each group.

        Args:
            groups: ``(k, m)`` int; row = one neuron of each task in ``tasks`` (a shared neuron so far).
            tasks: ``m`` distinct task indices (the columns of ``groups``).
            new_task: A task not in ``tasks``.
            chunk: Groups per block (bounds the ``(chunk, N_new)`` intermediates).
            clip: Clip at 0 (rounding, and the order-ρ negative values the ridge allows).

        Returns:
            ``(k, N_new)`` float64.
        """
        g = self._groups(groups, tasks)
        if new_task in tasks:
            raise InputError(f"{where(self.layer)}task {new_task} is already in the group's tasks {tuple(tasks)}")
        before = self._stage(tuple(tasks))
        after = self._stage(tuple(tasks) + (self._check_task(new_task),))
        r_before = self._objective(before, g)
        new = self.task_terms(new_task)
        pj, vj = after.p[-1], after.v[-1]
        qn = self._tap_sum(np.einsum("ij,ij->i", pj, pj), new.n)
        kvj = after.solver.solve(vj.T).T
        vkv = self._tap_sum(np.einsum("ij,ij->i", vj, kvj), new.n)
        base_j = new.q + after.lam * qn - vkv - new.r
        out = np.empty((g.shape[0], new.n))
        for s in range(0, g.shape[0], chunk):
            sl = slice(s, s + chunk)
            pg, vg = self._sum_members(after, g[sl])
            kvg = after.solver.solve(vg.T).T
            base_g = self._q_members(g[sl], tasks) + after.lam * self._tap_sum(
                np.einsum("ij,ij->i", pg, pg), g[sl].shape[0]
            ) - self._tap_sum(np.einsum("ij,ij->i", vg, kvg), g[sl].shape[0]) - r_before[sl]
            cross = after.lam * self._flat(pg) @ self._flat(pj).T - self._flat(kvg) @ self._flat(vj).T
            out[sl] = base_g[:, None] + base_j[None, :] + 2.0 * cross
        return np.maximum(out, 0.0) if clip else out

    def fit_shared(self, groups: np.ndarray, tasks: Sequence[int] | None = None) -> SharedFit:
        """Fit the shared neurons ``θ* = (Ĝ + λI)⁻¹ Σ_t (P_t C_t w_t + λ p_t)``.

        Args:
            groups: ``(k, m)`` int: row = one neuron of each task in ``tasks``.
            tasks: The group's tasks (default ``0..T-1``).
        """
        tasks = tuple(range(self.n_tasks)) if tasks is None else tuple(tasks)
        g = self._groups(groups, tasks)
        st = self._stage(tasks)
        _, vg = self._sum_members(st, g)
        theta = st.solver.solve(vg.T).T  # (k·P, Θ)
        errors = []
        views = []
        for col, (t, place) in enumerate(zip(tasks, st.place)):
            tt = self._tasks[t]
            w = tt.w.reshape(tt.n, self.taps, -1)[g[:, col]].reshape(-1, tt.w.shape[1])
            view = theta[:, place]
            errors.append(tt.error(view, w).reshape(g.shape[0], self.taps).sum(axis=1))
            views.append(self._out(view, g.shape[0]))
        theta = self._out(theta, g.shape[0], bias_at=self.n_shared if self.bias else None)
        sb = self.n_shared + int(self.bias)
        inter, off = [], sb
        for t in tasks:
            e = self._tasks[t].n_own
            inter.append(theta[..., off : off + e].copy())
            off += e
        return SharedFit(
            shared=theta[..., :sb].copy(), inter=tuple(inter), task_rows=tuple(views),
            error=np.asarray(errors), tasks=tasks,
        )

    # -- within-model merges ----------------------------------------------------------------------
    def within_costs(self, t: int, *, clip: bool = True) -> np.ndarray:
        """``(N_t, N_t)`` symmetric cost of merging two neurons of task ``t`` (diagonal 0):
        ``½[(y_i − y_j)ᵀ K_t (y_i − y_j) − λ_t ‖w̄_i − w̄_j‖²]``, summed over taps (clipped at 0 unless
        ``clip=False``)."""
        tt = self.task_terms(t)
        ky = tt.solver.solve(tt.y.T).T
        d_y = self._tap_sum(np.einsum("ij,ij->i", tt.y, ky), tt.n)
        d_w = self._tap_sum(np.einsum("ij,ij->i", tt.wbar, tt.wbar), tt.n)
        cross = self._flat(ky, tt.n) @ self._flat(tt.y, tt.n).T - tt.lam * (
            self._flat(tt.wbar, tt.n) @ self._flat(tt.wbar, tt.n).T
        )
        out = 0.5 * ((d_y - tt.lam * d_w)[:, None] + (d_y - tt.lam * d_w)[None, :] - 2.0 * cross)
        out = 0.5 * (out + out.T)
        np.fill_diagonal(out, 0.0)
        return np.maximum(out, 0.0) if clip else out

    def fit_within(self, t: int, pairs: np.ndarray) -> SpecificFit:
        """Fit one neuron per pair ``(i, j)`` of task ``t`` to both outputs: ``θ* = K_t (y_i + y_j)/2``.

        Returns:
            :class:`SpecificFit` with rows ``(k, D̃_t)`` / ``(k, P, D̃_t)``; error summed over both neurons.
        """
        tt = self.task_terms(t)
        p = self._groups(pairs, (t, t), check_distinct=False)
        y3 = tt.y.reshape(tt.n, self.taps, -1)
        w3 = tt.w.reshape(tt.n, self.taps, -1)
        fit = tt.solver.solve((0.5 * (y3[p[:, 0]] + y3[p[:, 1]])).reshape(-1, tt.zsize).T).T
        err = sum(tt.error(fit, w3[p[:, c]].reshape(-1, tt.w.shape[1])) for c in (0, 1))
        return SpecificFit(rows=self._out(fit, p.shape[0]), error=np.asarray(err).reshape(p.shape[0], self.taps).sum(axis=1))

    # -- internals ---------------------------------------------------------------------------------
    def _check_task(self, t: int) -> int:
        if not 0 <= int(t) < self.n_tasks:
            raise InputError(f"{where(self.layer)}task index {t} out of range 0..{self.n_tasks - 1}")
        return int(t)

    def _neurons(self, index: Sequence[int] | np.ndarray | None, n: int, what: str) -> np.ndarray:
        idx = np.arange(n) if index is None else np.asarray(index, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"{where(self.layer)}neuron index out of range 0..{n - 1} for {what}")
        return idx

    def _groups(self, groups: np.ndarray, tasks: Sequence[int], *, check_distinct: bool = True) -> np.ndarray:
        g = np.asarray(groups, dtype=np.int64)
        if g.ndim != 2 or g.shape[1] != len(tasks):
            raise InputError(f"{where(self.layer)}groups must have shape (k, {len(tasks)}), got {g.shape}")
        if check_distinct and len(set(tasks)) != len(tasks):
            raise InputError(f"{where(self.layer)}a group takes one neuron per task; tasks {tuple(tasks)} repeat")
        for col, t in enumerate(tasks):
            self._neurons(g[:, col], self.task_terms(t).n, f"task {t}")
        return g

    def _stage(self, tasks: tuple[int, ...]) -> Stage:
        if tasks not in self._stages:
            terms = [self._tasks[t] for t in tasks]
            self._stages[tasks] = build_stage(terms, tasks, self.n_shared, self.bias, self.layer)
        return self._stages[tasks]

    def _sum_members(self, st: Stage, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Σ_t p_t``, ``Σ_t v_t`` over the members of each group: ``(k·P, Θ)`` each."""
        pg = sum(self._pick(st.p[c], g[:, c]) for c in range(g.shape[1]))
        vg = sum(self._pick(st.v[c], g[:, c]) for c in range(g.shape[1]))
        return np.asarray(pg), np.asarray(vg)

    def _objective(self, st: Stage, g: np.ndarray) -> np.ndarray:
        """``(k,)`` R of each group over the stage's tasks."""
        pg, vg = self._sum_members(st, g)
        kv = st.solver.solve(vg.T).T
        k = g.shape[0]
        pp = self._tap_sum(np.einsum("ij,ij->i", pg, pg), k)
        return self._q_members(g, st.tasks) + st.lam * pp - self._tap_sum(np.einsum("ij,ij->i", vg, kv), k)

    def _q_members(self, g: np.ndarray, tasks: Sequence[int]) -> np.ndarray:
        return np.asarray(sum(self._tasks[t].q[g[:, c]] for c, t in enumerate(tasks)))

    def _pick(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return a.reshape(-1, self.taps, a.shape[1])[idx].reshape(-1, a.shape[1])

    def _tap_sum(self, per_row: np.ndarray, n: int) -> np.ndarray:
        return per_row.reshape(n, self.taps).sum(axis=1)

    def _flat(self, a: np.ndarray, n: int | None = None) -> np.ndarray:
        """``(n·P, X)`` → ``(n, P·X)``: row products then sum over taps."""
        return a.reshape(-1 if n is None else n, self.taps * a.shape[1])

    def _out(self, fit: np.ndarray, n: int, bias_at: int | None = -1) -> np.ndarray:
        """Fitted ``(n·P, X)`` → ``(n, X)`` or ``(n, P, X)`` with the per-channel conv bias joined."""
        if self.taps == 1:
            return fit.reshape(n, fit.shape[-1])
        out = fit.reshape(n, self.taps, fit.shape[-1]).copy()
        if self.bias and bias_at is not None:
            out[:, :, bias_at] = out[:, :, bias_at].sum(axis=1, keepdims=True)
        return out
