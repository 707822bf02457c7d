"""Faults injected into Ray workers (a worker_process_setup_hook), for tests/test_scale.py."""

import os


def fail_forward_kl_once() -> None:
    """The first forward-KL step that reaches step 2 anywhere in the cluster fails once; the marker file (created
    exclusively) records the failing worker's pid, so the test can tell who retried it."""
    from sparse2dense.stages.supervised import ForwardKLTrainer

    marker = os.environ["S2D_FAIL_ONCE_MARKER"]
    real = ForwardKLTrainer.training_step

    def flaky(self, *args, **kwargs):
        if self.state.global_step == 2:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                raise RuntimeError("transient failure injected by tests/ray_faults.py")
        return real(self, *args, **kwargs)

    ForwardKLTrainer.training_step = flaky
