"""A rank that writes its pid and then waits forever: what a hung rank looks like to the launcher."""

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    (folder / f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(1)
