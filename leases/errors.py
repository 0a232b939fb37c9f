"""Errors of the registry that callers handle (the CLI turns each into one line)."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's operational errors."""


class EtcdUnavailable(RegistryError):
    """No etcd endpoint answered (connection refused, timeout, or etcd is unhealthy)."""


class EtcdAccessDenied(RegistryError):
    """etcd refused vxflow: TLS (certificate) or authentication failure, or no permission
    on the prefix. Unlike EtcdUnavailable it does not heal by waiting: fix the options."""


class ConfigMissing(RegistryError):
    """`<prefix>/config` does not exist: the network has not been configured."""


class NetworkExhausted(RegistryError):
    """Every subnet in [SubnetMin, SubnetMax] is leased or reserved."""


class SubnetTaken(RegistryError):
    """The subnet is held by another node (another PublicIP)."""


class LeaseLost(RegistryError):
    """Our lease expired or was deleted and its subnet now belongs to someone else."""


class ServicesNotWritten(RegistryError):
    """A list of services that could not be written as one (none of it was)."""


class ServiceRejected(RegistryError):
    """A service that validation refuses (its key, the reason and its code)."""


class PolicyRejected(RegistryError):
    """`vxflow policies set` writes nothing: one line per refused object in `problems`."""

    def __init__(self, problems: list[str], total: int) -> None:
        super().__init__(f"{len(problems)} of {total} object(s) refused; nothing written")
        self.problems = problems


class ImportRefused(RegistryError):
    """`vxflow config import-v2` writes nothing: no or an invalid config in etcd's v2 store,
    or a different one in the v3 store (without --force)."""
