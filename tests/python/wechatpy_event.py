#!/usr/bin/env python3
"""Builds one server-URL POST the way a WeChat SDK does, with wechatpy (not the project's code).

Reads JSON from stdin:
  {"token": "...", "aes_key": "43 chars or null", "appid": "...", "mode": "plain|compatible|safe",
   "xml": "<xml>...</xml>", "timestamp": "...", "nonce": "..."}
Writes JSON to stdout: {"query": {"signature": ..., "timestamp": ..., "nonce": ..., ...},
                        "body": "<xml>...</xml>"}

plain: the body is the event XML. compatible: the event XML with an <Encrypt> element added.
safe: only <Encrypt>. The sealed modes add encrypt_type=aes and msg_signature to the query.
Exits 3 when wechatpy is not installed.
"""
import json
import sys
import xml.etree.ElementTree as ET

try:
    from wechatpy.crypto import WeChatCrypto
    from wechatpy.utils import WeChatSigner
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"wechatpy is not installed: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    req = json.load(sys.stdin)
    token, ts, nonce, xml = req["token"], req["timestamp"], req["nonce"], req["xml"]
    signer = WeChatSigner()
    signer.add_data(token, ts, nonce)
    query = {"signature": signer.signature, "timestamp": ts, "nonce": nonce}
    if req["mode"] == "plain":
        print(json.dumps({"query": query, "body": xml}))
        return
    crypto = WeChatCrypto(token, req["aes_key"], req["appid"])
    sealed = ET.fromstring(crypto.encrypt_message(xml, nonce, ts))
    encrypt = sealed.findtext("Encrypt")
    query["encrypt_type"] = "aes"
    query["msg_signature"] = sealed.findtext("MsgSignature")
    if req["mode"] == "compatible":
        body = xml.replace("</xml>", f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
    else:
        body = f"<xml><ToUserName><![CDATA[gh_sandbox000000]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    print(json.dumps({"query": query, "body": body}))


if __name__ == "__main__":
    main()
