"""The kernel side: one boot of the host, and the live-update orchestrator in it.

The state machine and its phases, participants and their records, the plugin
registry and hook specifications, the device tree with ``dev_liveupdate``,
the page allocator and KHO.  Pack authors import from :mod:`luo_core`; these
modules are internal.
"""
