"""The build check (fusedloss/buildcheck.py): every kernel configuration fusedloss launches at its
written realistic shapes, compiled for real GPU targets on this CPU-only machine, within its budgets.

Per family (one test each, so that pytest-xdist spreads them): every configuration compiled for sm_90; the
heaviest configuration (the most registers on sm_90) of each kernel and input dtype for sm_80 and sm_100,
and of each kernel for gfx942 and gfx950. ``python -m fusedloss buildcheck`` compiles every configuration
for every target (about 6 minutes of CPU).
"""
import importlib
import inspect
import os
import subprocess
import sys

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

import fusedloss.__main__ as cli
from fusedloss import buildcheck

FULL = ("sm_90",)
SAMPLED = ("sm_80", "sm_100", "gfx942", "gfx950")


@pytest.mark.parametrize("family", buildcheck.FAMILIES)
def test_every_configuration_compiles_within_its_budgets(family):
    rows = buildcheck.run(FULL, SAMPLED, families=[family])
    compiled = {arch: [row for row in rows if row.arch == arch] for arch in FULL + SAMPLED}
    assert all(compiled.values()), {arch: len(arch_rows) for arch, arch_rows in compiled.items()}
    assert {row.kernel for row in compiled["sm_90"]} >= {row.kernel for row in rows}
    failing = [row for row in rows if buildcheck.unexcused(row)]
    assert not failing, (f"{len(failing)} configurations exceed a budget without a written reason "
                         "(BUILD_BUDGET_EXCEPTIONS in the kernel's module):\n" + buildcheck.table(failing) + "\n"
                         + "\n".join(f"{row.kernel} {row.config} {row.arch}: {buildcheck.unexcused(row)}"
                                     for row in failing))


def test_the_written_exceptions_name_real_kernels_budgets_and_constexprs():
    """An exception that names nothing real would excuse nothing, or hide a typo: each names a kernel of
    its module, a budget, that kernel's constexprs, known targets, and gives its reason."""
    modules = ["fusedloss.kernels." + name for name in ("softmax_rows", "pointwise", "row_margin", "distribution_rows")]
    written = 0
    for module in map(importlib.import_module, modules):
        for entry in buildcheck.exceptions(module):
            written += 1
            kernel = getattr(module, entry["kernel"])
            assert set(entry) <= {"kernel", "budget", "where", "archs", "reason"}, entry
            budgets = entry["budget"] if isinstance(entry["budget"], tuple) else (entry["budget"],)
            assert budgets and set(budgets) <= set(buildcheck.BUDGETS), entry
            constexprs = {name for name, p in inspect.signature(kernel.fn).parameters.items()
                          if p.annotation is tl.constexpr}
            assert set(entry.get("where", {})) <= constexprs, entry
            assert set(entry.get("archs", buildcheck.ARCHS)) <= set(buildcheck.ARCHS), entry
            assert len(entry["reason"]) > 40, entry  # what it costs, on which GPUs
    assert written


# A kernel that must spill: three rows of 8192 float32 live at once in one warp (768 values per thread,
# beyond the 255 registers a thread can have). It shows that a broken budget fails the check. (Only core
# ``tl`` operations: the standard library's @jit helpers, tl.sum among them, are the interpreter's here.)
def _sum(a, b):
    return a + b


_add = JITFunction(_sum)  # compiled as a GPU would: the suite runs Triton's interpreter, whose @jit would not


def _spilling_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    b = tl.load(x_ptr + BLOCK + offs)
    c = tl.load(x_ptr + 2 * BLOCK + offs)
    ab, bc, ca = tl.reduce(a * b, 0, _add), tl.reduce(b * c, 0, _add), tl.reduce(c * a, 0, _add)
    tl.store(y_ptr + offs, a * bc + b * ca + c * ab)


BUILD_BUDGET_EXCEPTIONS = ()  # this module's exceptions: none, until the test below writes one


def test_a_broken_budget_fails_the_check_and_only_a_written_reason_excuses_it(monkeypatch):
    kernel = JITFunction(_spilling_kernel)
    x = torch.empty(3 * 8192, device="meta")
    config = buildcheck.Config("test", "three live rows", True, False, kernel, (x, x), {"BLOCK": 8192}, 1)
    row = buildcheck.compile_config(config, "sm_90")
    assert row.error == "" and row.spill_bytes > 0
    assert [budget for budget, _ in buildcheck.unexcused(row)] == ["spills"]
    assert "spills" in buildcheck.table([row]) and "(excused)" not in buildcheck.table([row])

    reason = "a demonstration: three 32 KiB rows per warp cannot live in registers on any GPU"
    module = sys.modules[_spilling_kernel.__module__]
    monkeypatch.setattr(module, "BUILD_BUDGET_EXCEPTIONS", [dict(kernel="_spilling_kernel", budget="spills",
                                                                 reason=reason)])
    assert buildcheck.excused(row, "spills") == reason and buildcheck.unexcused(row) == []
    assert "spills (excused)" in buildcheck.table([row])
    # an exception for other constexprs, or another target, excuses nothing
    monkeypatch.setattr(module, "BUILD_BUDGET_EXCEPTIONS", [
        dict(kernel="_spilling_kernel", budget="spills", where={"BLOCK": 4096}, reason=reason),
        dict(kernel="_spilling_kernel", budget="spills", archs=("sm_80",), reason=reason)])
    assert buildcheck.unexcused(row) != []


def test_the_ptx_readers():
    """The load width of the hot loop and the instruction counts, on PTX written for the purpose: a loop
    of 128-bit loads after a scalar load; the volatile loads of a reduction's tail do not count."""
    ptx = """
        ld.global.b64 {%rd1}, [%rd0];
    $L__BB0_1:
        @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd2 + 0 ];
        ex2.approx.f32 %r5, %r1;
        div.full.f32 %r6, %r5, %r2;
        @%p2 bra $L__BB0_1;
    $L__BB0_2:
        ld.volatile.global.b32 %r7, [%rd3];
        add.f64 %fd1, %fd2, %fd3;
        @%p3 bra $L__BB0_2;
    """
    assert buildcheck.hot_loop_load_bits(ptx) == 128
    counts = buildcheck.instruction_counts(ptx)
    assert (counts["ex2"], counts["div.full"], counts["f64"]) == (1, 1, 1)
    # no loop: the whole kernel is the hot code; a loop that only stores loads nothing
    assert buildcheck.hot_loop_load_bits("ld.global.v2.b32 {%r1, %r2}, [%rd1];") == 64
    assert buildcheck.hot_loop_load_bits("$L__BB0_1:\n st.global.v4.b32 [%rd1], {%r1,%r2,%r3,%r4};\n"
                                         " @%p1 bra $L__BB0_1;\n ld.global.b32 %r5, [%rd2];") is None


def test_configurations_come_from_the_launches():
    """Recording runs the public functions on meta tensors with the launch stub: the configuration is what
    the launcher chose (here cross entropy's tile for the Llama-3 vocabulary: 16384 columns, 8 warps for
    bfloat16), every row 16-byte aligned, nothing allocated."""
    done = subprocess.run([sys.executable, "-c", inspect.cleandoc("""
        from fusedloss import buildcheck
        for c in buildcheck.record(["softmax_rows"], ["cross_entropy"])[:2]:
            print(c.name, c.constexprs["BLOCK_C"], c.num_warps, c.aligned, c.case)
        """)], env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "_softmax_rows_fwd_kernel 16384 8 True cross_entropy bfloat16 8192x128256",
        "_softmax_rows_bwd_kernel 16384 8 True cross_entropy bfloat16 8192x128256"]


def test_the_command_prints_the_table(capsys):
    assert cli.main(["buildcheck", "--arch", "sm_90,gfx942", "--loss", "mse_loss"]) == 0
    out = capsys.readouterr().out
    assert "| _pointwise_fwd_kernel | bfloat16/float32 LOSS=mse" in out
    assert {"sm_90", "gfx942"} <= {line.split(" | ")[2] for line in out.splitlines() if line.startswith("| _")}
    assert "0 exceed a budget without a written reason" in out


@pytest.mark.parametrize("argv, message", [
    (["--arch", "sm_70"], "argument --arch: unknown sm_70; valid: sm_80, sm_90, sm_100, gfx942, gfx950"),
    (["--family", "softmax"], "argument --family: unknown softmax; valid: softmax_rows, pointwise"),
    (["--loss", "mse"], "argument --loss: unknown mse; valid: binary_cross_entropy"),
])
def test_the_command_rejects_unknown_names_listing_the_valid_ones(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["buildcheck", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_command_refuses_losses_outside_the_chosen_families(capsys):
    """--loss naming only losses that the chosen --family has no cases for: an error (exit 2), not an empty
    table that exits 0."""
    status = cli.main(["buildcheck", "--arch", "sm_90", "--family", "row_margin", "--loss", "nll_loss"])
    assert status == 2
    assert "argument --loss: none of nll_loss has cases in the families row_margin" in capsys.readouterr().err


# ------------------------------------------------------------------ float-float under fp fusion

_FUSION_PROBE = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedloss.kernels._math import two_prod

@triton.jit
def probe(a_ptr, b_ptr, c_ptr, out_ptr, err_ptr):
    a, b, c = tl.load(a_ptr), tl.load(b_ptr), tl.load(c_ptr)
    p, e = two_prod(a, b)
    tl.store(out_ptr, p - c)  # an add that reads p: were p a rounded fmul, LLVM would fuse it into fma(a, b, -c)
    tl.store(err_ptr, e)

signature = {name: "*fp32" for name in ("a_ptr", "b_ptr", "c_ptr", "out_ptr", "err_ptr")}
print(triton.compile(ASTSource(probe, signature), target=GPUTarget("cuda", 90, 32)).asm["ptx"])
"""


def test_two_prod_survives_fp_fusion_compiled_for_the_gpu(tmp_path):
    """Triton compiles with fp fusion on: an fmul p = a * b read by an add becomes fma(a, b, .), which uses the
    exact product where the float-float code expects the rounded p (its error e counted twice). Compiled for
    sm_90 (in a process without the interpreter): p comes from an FMA, never a mul, and the add that reads it
    stays a rounded subtraction."""
    script = tmp_path / "probe.py"
    script.write_text(_FUSION_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    ptx = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True).stdout
    instructions = buildcheck._PTX_INSTRUCTION.findall(ptx)
    assert not [i for i in instructions if i.startswith("mul.") and i.endswith("f32")], instructions
    assert sum(i.startswith("fma.rn.f32") for i in instructions) == 2, instructions  # p and its error
    assert any(i.startswith(("sub.f32", "add.f32", "sub.rn.f32", "add.rn.f32")) for i in instructions), instructions
