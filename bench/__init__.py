"""vxflow's benchmarks: one module per benchmark (b1..b4), shared plumbing beside them.

Each benchmark runs from one command (`python -m bench.bN_...`), starts every
component it needs (private OVS, etcd, the controller, namespaces), stops them
by PID, and writes its figures to bench/results/<name>.json; BENCHMARKS.md
quotes those files. `python -m bench.run_all` runs them all in sequence.
"""

import warnings

# etcd3gw pulls in eventlet through futurist; its deprecation banner is noise here.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
