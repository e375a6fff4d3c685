#!/usr/bin/env python3
"""Provision one device with X.509 client-certificate auth using the official
azure-iot-device SDK (ProvisioningDeviceClient.create_from_x509_certificate).

Prints exactly one JSON line on stdout; see sdk_harness.py for the contract.
"""
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdk_harness  # noqa: E402


def main():
    p = sdk_harness.common_parser(__doc__)
    p.add_argument("--cert", required=True, help="device certificate (chain) PEM file")
    p.add_argument("--key", required=True, help="device private key PEM file")
    p.add_argument("--pass-phrase", default=None, help="pass phrase of --key, if encrypted")
    args = p.parse_args()

    def make_client():
        from azure.iot.device import ProvisioningDeviceClient, X509

        x509 = X509(cert_file=args.cert, key_file=args.key, pass_phrase=args.pass_phrase)
        return ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=args.host,
            registration_id=args.registration_id,
            id_scope=args.id_scope,
            x509=x509,
            **sdk_harness.client_kwargs(args),
        )

    sdk_harness.run(args, make_client)


if __name__ == "__main__":
    main()
