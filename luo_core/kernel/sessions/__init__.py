"""The upstream (6.19) LUO model: sessions, file handlers, FLBs and the memfd handler."""

from luo_core.kernel.sessions._core import Luo
from luo_core.kernel.sessions._memfd import memfd_handler
from luo_core.kernel.sessions._records import FileHandler, FileHandlerOps, Flb, FlbOps, LiveFile
from luo_core.kernel.sessions._session import LiveUpdateDevice, Session

__all__ = [
    "FileHandler",
    "FileHandlerOps",
    "Flb",
    "FlbOps",
    "LiveFile",
    "LiveUpdateDevice",
    "Luo",
    "Session",
    "memfd_handler",
]
