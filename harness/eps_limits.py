"""The eps a suite may ask for, per norm: L-inf eps above 1 is an error (inputs are in [0, 1]);
L2 eps beyond a dataset's published range is a warning (``robench.plan`` checks every entry)."""

from __future__ import annotations

import warnings

from robench.eps import eps_text
from robench.errors import UserError

#: the largest L-inf eps: inputs are in [0, 1]
MAX_LINF_EPS = 1.0
#: per dataset: (above this L2 eps a warning, not an error; the budgets published for it).
#: MNIST: 0.5-3 (2.0 in Croce & Hein 2020's L2 experiments, 1.5-2.5 in Madry et al.'s L2
#: MNIST challenge); at 5 most digits can be turned into another class by a human-visible
#: change. Fashion-MNIST: the same 28x28 grey images; published L2 budgets are 1.0-1.5, so 5 is
#: as far out. A dataset missing here (registered through the Python API) is not warned about:
#: robench does not know its scale.
L2_SENSIBLE_EPS = {"mnist": (5.0, "0.5-3"), "fashion_mnist": (5.0, "1-1.5")}


class EpsWarning(UserWarning):
    """An eps that is valid but outside the sensible range of its norm."""


def check_eps(norm: str, eps: list[float], dataset: str, where: str) -> None:
    """L-inf eps in [0, 1] (an error, naming the entry); L2 eps above the dataset's
    ``L2_SENSIBLE_EPS`` warned about (the schema already caps every eps at the L2 diameter of
    the image)."""
    for j, value in enumerate(eps):
        if norm == "linf" and value > MAX_LINF_EPS:
            raise UserError(f"Input should be less than or equal to {MAX_LINF_EPS:g} for an "
                            f"L-inf attack (got {value:g}; L2 needs params.norm: l2)",
                            where=f"{where}[{j}]")
    limit, usual = L2_SENSIBLE_EPS.get(dataset, (None, ""))
    big = [e for e in eps if norm == "l2" and limit is not None and e > limit]
    if big:
        warnings.warn(f"{where}: L2 eps {', '.join(eps_text(e) for e in big)} above "
                      f"{limit:g}, outside the sensible range on {dataset} ({usual} is usual)",
                      EpsWarning, stacklevel=2)


__all__ = ["L2_SENSIBLE_EPS", "MAX_LINF_EPS", "EpsWarning", "check_eps"]
