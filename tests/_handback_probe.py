"""A hand-back recipe's module for tests/test_keeper_start.py: it notes (in the file
$LELECT_TEST_PROBE) when the keeper imported it and when it handed back."""

import os
import time

with open(os.environ["LELECT_TEST_PROBE"], "a") as _f:
    _f.write(f"imported {time.time_ns()}\n")


def hand_back(params, budget, exit_status):
    with open(os.environ["LELECT_TEST_PROBE"], "a") as f:
        f.write(f"handed {params['election']} {exit_status}\n")
    return "released"
