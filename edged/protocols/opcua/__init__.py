"""OPC UA support shared by the `opcua` driver (a client) and the `opcua` uplink (a server).

`certs`: application certificates and the trust check of a peer; `errors`: asyncua's and the
socket layer's exceptions as edged's errors; `values`: asyncua structs and OPC UA times from plain
Python values. This module itself imports nothing heavy, so `edged opcua-cert` can import `certs`
without asyncua.
"""

from typing import Literal

# The security policies both sides offer (each in both modes); "None" only when written out.
SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["Sign", "SignAndEncrypt"]
