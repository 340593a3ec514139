"""The kvm record's versions: migration, rollback writer, and the golden record of each."""

from __future__ import annotations

import attrs
import pytest
from golden_records import golden_state
from luo_kvm import KvmRecord
from luo_kvm._contract import golden

from luo_core.abi import decode_state, encode_record, unseal
from luo_core.errors import DeviceError


def test_every_version_read_has_a_golden_record_that_decodes_to_the_same_state() -> None:
    records = golden()
    assert sorted(records) == [1, 2]
    for version, blob in records.items():
        sealed = unseal(blob)
        assert (sealed.compatible, sealed.version) == ("luo,kvm-state", version)
        assert decode_state(KvmRecord, sealed.payload, version) == golden_state()


def test_v1_kept_the_step_in_rax_and_the_migration_moves_it() -> None:
    state = golden_state()
    vcpu = state.vms[0].vcpus[0]
    v1 = unseal(encode_record(state, version=1))
    back = decode_state(KvmRecord, v1.payload, 1).vms[0].vcpus[0]
    assert (back.step, back.tsc_offset, back.gprs[0]) == (vcpu.step, 0, vcpu.step)


def test_a_v1_kernel_cannot_be_handed_a_tsc_offset() -> None:
    state = golden_state()
    vm = state.vms[0]
    offset = attrs.evolve(vm.vcpus[0], tsc_offset=5)
    shifted = KvmRecord([attrs.evolve(vm, vcpus=[offset, *vm.vcpus[1:]])])
    with pytest.raises(DeviceError, match="cannot run a TSC offset"):
        encode_record(shifted, version=1)
