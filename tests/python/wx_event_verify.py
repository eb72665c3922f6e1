#!/usr/bin/env python3
"""Independent check of WeChat server-URL events, written from the documented algorithm only.

Reads JSON from stdin:
  {"token": "...", "aes_key": "43 chars or null", "appid": "...",
   "events": [{"query": {"signature": ..., "timestamp": ..., "nonce": ..., ...}, "body": "<xml>..."}]}
Writes JSON to stdout, one result per event:
  {"results": [{"signature_ok": bool, "msg_signature_ok": bool|null, "appid": str|null,
                "fields": {"ToUserName": ..., "FromUserName": ..., "MsgID": ..., "Status": ...}}]}

signature      = sha1(sorted([token, timestamp, nonce]).join(""))
msg_signature  = sha1(sorted([token, timestamp, nonce, encrypt]).join(""))
AES-256-CBC, key = b64decode(EncodingAESKey + "="), IV = key[:16], PKCS#7 padding to 32 bytes,
plaintext = 16 random bytes + 4-byte big-endian length + message + appid.
"""
import base64
import hashlib
import json
import struct
import sys
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def sha1_sorted(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def decrypt(aes_key, encrypt):
    key = base64.b64decode(aes_key + "=")
    assert len(key) == 32, "EncodingAESKey must decode to 32 bytes"
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(encrypt)) + dec.finalize()
    pad = plain[-1]
    assert 1 <= pad <= 32, f"bad PKCS#7 pad {pad}"
    assert plain[-pad:] == bytes([pad]) * pad, "inconsistent padding bytes"
    assert len(plain) % 32 == 0, "not padded to a 32-byte block"
    plain = plain[:-pad]
    (length,) = struct.unpack(">I", plain[16:20])
    message = plain[20 : 20 + length]
    appid = plain[20 + length :].decode()
    return message.decode(), appid


def fields(xml_text):
    root = ET.fromstring(xml_text)
    return {child.tag: (child.text or "") for child in root}


def check(token, aes_key, event):
    q = event["query"]
    result = {
        "signature_ok": sha1_sorted(token, q["timestamp"], q["nonce"]) == q.get("signature"),
        "msg_signature_ok": None,
        "appid": None,
        "fields": {},
    }
    outer = fields(event["body"])
    if "Encrypt" in outer:
        enc = outer["Encrypt"]
        result["msg_signature_ok"] = (
            sha1_sorted(token, q["timestamp"], q["nonce"], enc) == q.get("msg_signature")
        )
        message, appid = decrypt(aes_key, enc)
        result["appid"] = appid
        result["fields"] = fields(message)
        result["outer_fields"] = sorted(outer)
    else:
        result["fields"] = outer
    return result


def main():
    req = json.load(sys.stdin)
    out = [check(req["token"], req.get("aes_key"), e) for e in req["events"]]
    json.dump({"results": out}, sys.stdout)


if __name__ == "__main__":
    main()
