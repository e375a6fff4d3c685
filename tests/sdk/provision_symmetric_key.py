#!/usr/bin/env python3
"""Provision one device with symmetric-key (SAS) auth using the official
azure-iot-device SDK (ProvisioningDeviceClient.create_from_symmetric_key).

Give either --symmetric-key (individual enrollment / already-derived key) or
--group-key (enrollment-group key; the device key is derived here as
base64(HMAC-SHA256(base64decode(groupKey), registrationId))).
Prints exactly one JSON line on stdout; see sdk_harness.py for the contract.
"""
import base64
import hashlib
import hmac
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdk_harness  # noqa: E402


def derive_device_key(group_key, registration_id):
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def main():
    p = sdk_harness.common_parser(__doc__)
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--symmetric-key", help="device symmetric key (base64)")
    keys.add_argument("--group-key", help="enrollment group key (base64); device key is derived")
    args = p.parse_args()

    def make_client():
        from azure.iot.device import ProvisioningDeviceClient

        if args.group_key is not None:
            key = derive_device_key(args.group_key, args.registration_id)
        else:
            key = args.symmetric_key
        return ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=args.host,
            registration_id=args.registration_id,
            id_scope=args.id_scope,
            symmetric_key=key,
            **sdk_harness.client_kwargs(args),
        )

    sdk_harness.run(args, make_client)


if __name__ == "__main__":
    main()
