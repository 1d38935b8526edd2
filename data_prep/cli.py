"""``dali-dist prep ...``: the typer app the main CLI mounts (``app.add_typer(prep_app, name="prep")``).

    dali-dist prep mnist   --source /usr/share/datasets/fashion-mnist --out data/fmnist
    dali-dist prep cifar10 --source cifar-10-python.tar.gz --out data/cifar10 [--download]
    dali-dist prep celeba  --source img_align_celeba.zip --out data/celeba64 [--resolution 128] [--crop 160]
    dali-dist prep folder  --source photos/ --out data/photos --resolution 64
    dali-dist prep grid2d  --out data/grid2d
    dali-dist prep verify  data/fmnist

Every command also runs as ``python -m data_prep.<name>`` with the same options.
Bad input exits with code 2 and one line ``error: <file>: <problem>``.
"""

from __future__ import annotations

import typer

from dali_dist.cli_util import exits_cleanly

from . import celeba, cifar10, folder, grid2d, mnist, verify

prep_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Turn raw datasets into WebDataset shards with a manifest.")
prep_app.command("cifar10")(cifar10.command)
prep_app.command("celeba")(celeba.command)
prep_app.command("mnist")(mnist.command)
prep_app.command("folder")(folder.command)
prep_app.command("grid2d")(grid2d.command)
prep_app.command("verify")(verify.command)


def main() -> None:
    exits_cleanly(prep_app)()


if __name__ == "__main__":
    main()
