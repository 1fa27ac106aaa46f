"""A process of a data-parallel group that dies ends the others within seconds, not after the process group's
long timeout (which is there for ranks that wait, alive, while another encodes or validates)."""

import os
import subprocess
import sys
import time

from helpers import free_port

SCRIPT = """
import os
from sam3dseg.common.runtime import barrier, init_distributed
rank, world = init_distributed()
if rank == 1:
    os._exit(3)  # killed: no clean shutdown
barrier()  # rank 0 waits for a rank that is gone
"""


def test_a_dead_rank_ends_the_others(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    codes = [p.wait(timeout=120) for p in procs]
    assert codes[1] == 3 and codes[0] != 0, procs[0].stdout.read()
    assert time.perf_counter() - start < 60  # seconds, not the 6 hours a waiting rank may take
