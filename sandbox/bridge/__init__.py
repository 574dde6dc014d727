"""Byte relays between TCP and vsock: the only network a Nitro enclave has.

``endpoints`` parses what an operator writes (``vsock:any:8443=tcp:...``),
and ``relay`` copies bytes between an accepted connection and a new one.
``sandbox.loopback`` brings up ``lo``, which starts down inside an enclave.
"""
