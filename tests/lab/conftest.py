"""The lab tests' own lab folder."""

from __future__ import annotations

import pytest

from idra.lab import state as S
from idra.netns import netns_names


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    """A lab folder of this module's own, for this process and every subprocess (never
    the machine's default, where a leftover must not matter); refuses while a lab's
    namespaces are up."""
    if any(n.startswith(S.NS_PREFIX) for n in netns_names()):
        pytest.fail("a lab is already up on this machine: run 'idra lab down' first")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "LAB_DIR", tmp_path_factory.mktemp("lab") / "idra-lab")
        mp.setenv("IDRA_LAB_DIR", str(S.LAB_DIR))
        yield S.LAB_DIR
