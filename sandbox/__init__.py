"""policy-sandbox: data-owner policy enforcement beside an app in an enclave."""

__version__ = "0.1.0"
