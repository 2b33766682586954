"""Sample quality against NFE for every sampler, with the exact score of a Gaussian mixture.

    python bench/quality_vs_nfe.py [--n 50000] [--sdes vp,ve]

Model: the exact score of ``analytic.default_mixture()`` (2-D, three unequal components), so the
only error is the sampler's. Quality: sliced-Wasserstein distance SW₂ (256 directions) between
--n samples and --n fresh true samples; the first row is that distance between two sets of true
samples (the noise floor). Every sampler starts from the same prior draw. NFE budgets 10, 20,
50, 100, 1000:

- PC Euler–Maruyama (predictor only, N = NFE);
- PC reverse diffusion + Langevin (snr 0.16 VE, 0.01 VP, N = NFE / 2);
- ODE, diffrax Tsit5 at rtol = atol = 1e-1 … 1e-5 (its NFE is what the solver took);
- EDM Heun, Karras ρ = 7 (N = (NFE + 1) / 2 σ's, 2N − 1 NFE);
- DPM-Solver++(2M) and (3M), log-SNR steps (NFE steps), and adaptive (order 3) at three tolerances.

``× PC1000`` divides by the SW of the paper's PC1000 (reverse diffusion + Langevin, N = 1000,
2000 NFE). The last lines give the best sampler with ≤ 20 NFE against the 1.2× target.
"""

from __future__ import annotations

import argparse

import jax
from common import machine, print_table

from score_sde_jax import analytic, fast_sampling, sampling, sde_lib

BUDGETS = (10, 20, 50, 100, 1000)
SDES = {"vp": (sde_lib.VPSDE, 1e-3, 0.01), "ve": (sde_lib.VESDE, 1e-5, 0.16),
        "subvp": (sde_lib.subVPSDE, 1e-3, 0.01)}


def samplers(make_sde, eps, snr, shape):
    """(name, setting, sampler) for every row of one SDE."""
    for nfe in BUDGETS:
        yield "PC Euler-Maruyama", f"N={nfe}", sampling.get_pc_sampler(
            make_sde(N=nfe), shape, "euler_maruyama", "none", eps=eps)
    for nfe in BUDGETS:
        yield "PC rev.diff.+Langevin", f"N={nfe // 2}", sampling.get_pc_sampler(
            make_sde(N=nfe // 2), shape, "reverse_diffusion", "langevin", snr=snr, eps=eps)
    yield "PC1000 (paper)", "N=1000", sampling.get_pc_sampler(
        make_sde(N=1000), shape, "reverse_diffusion", "langevin", snr=snr, eps=eps)
    sde = make_sde()
    for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
        yield "ODE diffrax Tsit5", f"tol={tol:g}", sampling.get_ode_sampler(sde, shape, tol, tol, eps=eps)
    for nfe in BUDGETS:
        n = (nfe + 1) // 2
        yield "EDM Heun", f"N={n}", fast_sampling.get_heun_sampler(sde, shape, n, eps=eps)
    for order in (2, 3):
        for nfe in BUDGETS:
            yield f"DPM-Solver++({order}M)", f"steps={nfe}", fast_sampling.get_dpm_solver_sampler(
                sde, shape, nfe, order, eps=eps)
    for rtol, atol in ((0.1, 0.05), (0.05, 0.0078), (0.01, 0.001)):
        yield "DPM-Solver++ adaptive", f"rtol={rtol:g} atol={atol:g}", \
            fast_sampling.get_adaptive_dpm_solver_sampler(sde, shape, 3, rtol, atol, eps=eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50000, help="samples per sampler")
    parser.add_argument("--sdes", default="vp,ve", help=f"comma-separated, of {sorted(SDES)}")
    args = parser.parse_args()
    gmm = analytic.default_mixture()
    ref = gmm.sample(jax.random.PRNGKey(1), args.n)
    sw_key = jax.random.PRNGKey(3)

    def sw(x):
        return float(analytic.sliced_wasserstein(sw_key, x, ref))

    rows, notes = [], []
    floor = sw(gmm.sample(jax.random.PRNGKey(2), args.n))
    for name in args.sdes.split(","):
        make_sde, eps, snr = SDES[name]
        results = []
        for label, setting, sampler in samplers(make_sde, eps, snr, (args.n, 2)):
            sde = make_sde()  # the score only needs the SDE's continuous coefficients
            run = jax.jit(lambda r, s=sampler, sc=gmm.score_fn(sde): s(r, sc))
            x, nfe = run(jax.random.PRNGKey(0))
            results.append((label, setting, int(nfe), sw(x)))
        pc1000 = next(d for lab, _, _, d in results if lab.startswith("PC1000"))
        rows.append([name, "true samples (noise floor)", "-", "-", f"{floor:.4f}", f"{floor / pc1000:.2f}"])
        rows += [[name, lab, st, nfe, f"{d:.4f}", f"{d / pc1000:.2f}"] for lab, st, nfe, d in results]
        few = min((r for r in results if r[2] <= 20), key=lambda r: r[3])
        verdict = "met" if few[3] <= 1.2 * pc1000 else "NOT met"
        notes.append(f"{name}: best <= 20 NFE: {few[0]} {few[1]} ({few[2]} NFE) SW {few[3]:.4f} = "
                     f"{few[3] / pc1000:.2f} x PC1000 ({pc1000:.4f}); target <= 1.2x {verdict}")
    print_table(f"Quality vs NFE, exact GMM score, n = {args.n}, SW2 to fresh true samples; {machine()}",
                ["SDE", "sampler", "setting", "NFE", "SW2", "x PC1000"], rows, notes)


if __name__ == "__main__":
    main()
