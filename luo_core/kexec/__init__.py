"""The only code that builds kernels: a cold boot, and kexec in this process or into a new one.

In this process (fast, for tests): :func:`boot` and :func:`kexec`, which also
proves that nothing of the old kernel reached the new one.  Across processes
(the real thing): :class:`KernelProcess`, each kernel a process of its own
started from boot parameters alone, on hardware running in its own process
(:class:`~luo_core.platform.HardwareProcess`).
"""

from luo_core.kexec._inproc import boot, kexec
from luo_core.kexec._process import DeviceInfo, KernelProcess

__all__ = ["DeviceInfo", "KernelProcess", "boot", "kexec"]
