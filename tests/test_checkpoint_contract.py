"""Checkpoint and lease contracts, bound to every backend by the plugin's fixtures."""

from cqrs_kit.testing.checkpoint_contract import CheckpointStoreContract, LeaseManagerContract


class TestCheckpointStore(CheckpointStoreContract):
    pass


class TestLeaseManager(LeaseManagerContract):
    pass
