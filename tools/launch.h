// `--nproc N`: this command line run again as N worker processes on this machine, joined by
// torchrun's environment (MASTER_ADDR=127.0.0.1, a free MASTER_PORT, WORLD_SIZE, RANK,
// LOCAL_RANK, LOCAL_WORLD_SIZE). The launcher waits for every worker; when one fails, the others
// get the distributed timeout to notice and stop, then are killed.
#pragma once

namespace adapters::cli {

// Whether this process is a worker of a distributed run (WORLD_SIZE set above 1).
bool is_distributed_worker();

// Runs N workers of this process's own command line without its --nproc option and returns the
// exit code: 0 when every worker succeeded, else the first failed worker's (128 + signal when
// killed). Ctrl-C reaches the workers, which stop with a resumable checkpoint.
int launch_workers(int nproc);

}  // namespace adapters::cli
