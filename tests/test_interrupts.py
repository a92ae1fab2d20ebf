"""Signals recorded at once and raised at safe points (`interrupts.Signals`)."""

from __future__ import annotations

import os
import signal

import pytest

from lpips_lightning.errors import Interrupted
from lpips_lightning.interrupts import Signals


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_is_raised_at_the_next_check_with_its_status(signum, status):
    before = signal.getsignal(signum)
    with Signals() as signals:
        os.kill(os.getpid(), signum)  # recorded, not raised: the work between checks finishes
        with pytest.raises(Interrupted) as stopped:
            signals.check()
    assert stopped.value.status == status
    assert signal.getsignal(signum) == before  # the handler is put back
