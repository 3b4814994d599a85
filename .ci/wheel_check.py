"""Check an installed refdiff wheel from outside the source tree (``make dist`` runs it).

    python .ci/wheel_check.py SOURCE_ROOT

with the python of a clean venv that has only the wheel (and so only the base dependencies):
the installed package holds every module of the source tree, its license and ``py.typed``; the
console script answers ``--version`` and every command's ``--help``; and the core runs.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def installed_modules(package_dir: Path) -> set[str]:
    return {p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*.py")}


def source_modules(root: Path) -> set[str]:
    mods = {p.relative_to(root / "refdiff").as_posix() for p in (root / "refdiff").rglob("*.py")}
    mods |= {
        "export/" + p.relative_to(root / "export").as_posix()
        for p in (root / "export").rglob("*.py")
    }
    return mods


def check_contents(root: Path) -> None:
    import refdiff

    package_dir = Path(refdiff.__file__).resolve().parent
    assert package_dir != root / "refdiff", "refdiff was imported from the source tree"
    missing = source_modules(root) - installed_modules(package_dir)
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert (package_dir / "py.typed").is_file(), "the wheel lacks refdiff/py.typed"
    dist = metadata.distribution("refdiff")
    assert dist.version == refdiff.__version__, (dist.version, refdiff.__version__)
    assert dist.metadata["License-Expression"] == "BSD-3-Clause", dist.metadata[
        "License-Expression"
    ]
    assert any(str(f).endswith("licenses/LICENSE") for f in dist.files or ()), "no LICENSE"
    print(f"wheel: refdiff {dist.version}, {len(installed_modules(package_dir))} modules, LICENSE")


def check_cli() -> None:
    import refdiff

    exe = Path(sys.executable).with_name("refdiff")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"refdiff {refdiff.__version__}", out
    for command in ("", "demo", "train", "export", "check", "sample", "eval"):
        args = [exe, *([command] if command else []), "--help"]
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: refdiff" in proc.stdout, (args, proc.stderr)
    print("cli: refdiff --version and the --help of every command")


def check_core() -> None:
    import numpy as np

    import refdiff as rd

    schedule = rd.get_schedule("cosine", 50)
    x0 = np.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    noise = rd.standard_normal(0, np.arange(2), 7, (3, 4, 4), xp=np)
    xt = rd.q_sample(schedule, x0, 30, noise)
    acp = np.prod(1.0 - schedule.betas[:31])
    np.testing.assert_allclose(xt, np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise, rtol=1e-12)

    mixture = rd.GaussianMixture.gaussian([0.2, -0.1], 0.3)
    diffusion = rd.Diffusion(schedule, image_shape=(2, 1, 1))
    samples = diffusion.sample(mixture.denoiser(schedule), 8, sampler="ddim", steps=10, seed=1)
    assert samples.shape == (8, 2, 1, 1) and np.isfinite(samples).all()
    bound = rd.variational_bound(
        schedule,
        mixture.denoiser(schedule),
        mixture.sample(8, np.random.default_rng(0)),
        decoder="gaussian",
    )
    assert np.isfinite(bound.total_bpd).all()
    print("core: q_sample equals its closed form; DDIM samples and the bound are finite")


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    check_contents(root)
    check_cli()
    check_core()
    return 0


if __name__ == "__main__":
    sys.exit(main())
