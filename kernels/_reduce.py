"""Grid-wide sums inside one launch, deterministic (no float atomics).

Every program stores its partial sum(s) to a buffer of one slot per program, then takes a ticket from an
int32 counter (an atomic add with acquire-release semantics, after a barrier so that the whole program's
store is released). The program that draws the last ticket sees every partial, adds them in program
order (fixed blocks of ``RBLOCK`` and a fixed tree inside each block: the same result on every run,
whatever order the programs finished in), writes the reduced value and resets the counter to 0 for the
next launch. CUDA's own reductions finish the same way (last block by a semaphore).

Cost: one 4-byte store and one atomic per program, plus n_programs * 4 bytes read by the last one.
"""
import triton
import triton.language as tl

from ._math import div_rn


@triton.jit
def is_last_program(counter_ptr):
    """True in exactly one program of the launch: the last to arrive. Call after storing the partials."""
    tl.debug_barrier()  # every thread's partial store precedes the release below
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return ticket == tl.num_programs(0) - 1


@triton.jit
def sum_partials(partials_ptr, n_partials, RBLOCK: tl.constexpr, ACC: tl.constexpr):
    """Sum of ``n_partials`` values in a fixed order (read by the last program, past the L1 cache)."""
    acc = tl.zeros([RBLOCK], ACC)
    for start in range(0, n_partials, RBLOCK):
        offs = start + tl.arange(0, RBLOCK)
        acc += tl.load(partials_ptr + offs, mask=offs < n_partials, other=0.0, volatile=True).to(ACC)
    return tl.sum(acc, axis=0)


@triton.jit
def release_counter(counter_ptr):
    """Reset the ticket counter for the next launch (the last program, once it has read the partials)."""
    tl.store(counter_ptr, 0)


@triton.jit
def finish_grid_sum(partial, out_ptr, partials_ptr, counter_ptr, divisor, RBLOCK: tl.constexpr, ACC: tl.constexpr):
    """Every program: store its ``partial`` sum; the last one: store sum(partials) / divisor in ``out_ptr``
    (in its dtype) and reset the counter. The whole reduction of a one-value-per-launch loss."""
    tl.store(partials_ptr + tl.program_id(0), partial)
    if is_last_program(counter_ptr):
        total = div_rn(sum_partials(partials_ptr, tl.num_programs(0), RBLOCK, ACC), divisor)
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))
        release_counter(counter_ptr)


@triton.jit
def finish_grid_mean(loss_sum, weight_sum, out_ptr, denom_ptr, given_denom_ptr, counter_ptr, min_denom,
                     MEAN: tl.constexpr, DENOM_GIVEN: tl.constexpr, RBLOCK: tl.constexpr, ACC: tl.constexpr):
    """Every program: store its sums (of the loss; of the rows' weights for a 'mean' whose denominator is
    not given) in the partials after ``denom_ptr``; the last one: store sum(loss) or, for MEAN, sum(loss) /
    denom in ``out_ptr``, denom being the summed weights (at least ``min_denom``; -inf: no floor) or the
    given one, which it also stores at ``denom_ptr`` for the backward; reset the counter. A weighted mean's
    whole reduction (cross entropy's, the distribution losses')."""
    n_programs = tl.num_programs(0)
    partials_ptr = denom_ptr + 1
    tl.store(partials_ptr + tl.program_id(0), loss_sum)
    if MEAN and not DENOM_GIVEN:
        tl.store(partials_ptr + n_programs + tl.program_id(0), weight_sum)
    if is_last_program(counter_ptr):
        total = sum_partials(partials_ptr, n_programs, RBLOCK, ACC)
        if MEAN:
            if DENOM_GIVEN:
                denom = tl.load(given_denom_ptr).to(ACC)
            else:
                denom = sum_partials(partials_ptr + n_programs, n_programs, RBLOCK, ACC)
                denom = tl.where(denom < min_denom, min_denom, denom)  # NaN stays NaN
            tl.store(denom_ptr, denom)
            total = div_rn(total, denom)
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))
        release_counter(counter_ptr)
