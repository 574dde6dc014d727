"""Attestation: fold the policy hash into the enclave's measurement, produce
evidence, and verify evidence offline.

    measure        policy hash -> PCR16, HOST_DATA, user_data, REPORT_DATA
    provider       the provider interface and ``make_provider``
    simulated      development documents in the Nitro format
    nsm            Nitro Enclaves through /dev/nsm
    tsm            SEV-SNP through configfs-tsm or /dev/sev-guest
    cose           COSE_Sign1 / ES384
    nitro_document the Nitro document payload
    nitro_verify   Nitro verification
    snp_report     the SEV-SNP report layout
    snp_certs      VCEK / ASK / ARK and the certificate table
    snp_verify     SEV-SNP verification
    certs          X.509 steps both verifiers share
    checks         the record of checks a verification leaves
    evidence       recognising raw, hex and base64 input
    roots          pinned vendor roots
    doubles        device doubles for tests (NSM, configfs-tsm, AMD keys)
"""
