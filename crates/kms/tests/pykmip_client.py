#!/usr/bin/env python3
"""Drives `atrest kms serve` with PyKMIP's own client (ProxyKmipClient): every operation the
server offers, in each KMIP version given on the command line, plus the negative cases.

Settings come from the environment, as written by the server to DIR/client.env:
KMIP_HOST, KMIP_PORT, KMIP_CA, KMIP_CLIENT_CERT, KMIP_CLIENT_KEY, KMIP_USERNAME, KMIP_PASSWORD,
and for a second client (isolation checks) KMIP_OTHER_CLIENT_CERT, KMIP_OTHER_CLIENT_KEY,
KMIP_OTHER_USERNAME, KMIP_OTHER_PASSWORD.

Prints one PASS/FAIL line per check and exits 1 if any failed.
"""
import os
import sys
import time

from kmip import enums
from kmip.core.factories import attributes as attr_factory
from kmip.pie import exceptions as pexc
from kmip.pie import objects as pobjects
from kmip.pie.client import ProxyKmipClient

E = os.environ
AF = attr_factory.AttributeFactory()
VERSIONS = {"1.0": enums.KMIPVersion.KMIP_1_0, "1.1": enums.KMIPVersion.KMIP_1_1,
            "1.2": enums.KMIPVersion.KMIP_1_2, "1.3": enums.KMIPVersion.KMIP_1_3,
            "1.4": enums.KMIPVersion.KMIP_1_4, "2.0": enums.KMIPVersion.KMIP_2_0}
RUN = "pykmip-%d-%d" % (int(time.time()), os.getpid())
R = enums.ResultReason
failed = 0
passed = 0


def report(ok, name, detail=""):
    global passed, failed
    passed += ok
    failed += not ok
    print("%s  %-52s %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)


def check(name, fn):
    try:
        d = fn()
        report(True, name, "" if d is None else str(d))
    except Exception as e:  # noqa: BLE001
        report(False, name, "%s: %s" % (type(e).__name__, e))


def expect(fn, reason):
    try:
        fn()
    except pexc.KmipOperationFailure as e:
        if e.reason == reason:
            return "%s (%s)" % (e.reason.name, e.message)
        raise AssertionError("expected %s, got %s: %s" % (reason.name, e.reason.name, e.message))
    raise AssertionError("expected %s, but it succeeded" % reason.name)


def client(version, cert=None, key=None, username=None, password=None):
    return ProxyKmipClient(
        hostname=E["KMIP_HOST"], port=int(E["KMIP_PORT"]),
        cert=cert or E["KMIP_CLIENT_CERT"], key=key or E["KMIP_CLIENT_KEY"], ca=E["KMIP_CA"],
        ssl_version="PROTOCOL_TLSv1_2",
        username=username if username is not None else E["KMIP_USERNAME"],
        password=password if password is not None else E["KMIP_PASSWORD"],
        config_file=os.devnull, kmip_version=VERSIONS[version])


def attrs(c, uid, names=None):
    _, lst = c.get_attributes(uid, names) if names else c.get_attributes(uid)
    out = {}
    for a in lst:
        v = a.attribute_value
        out[a.attribute_name.value] = getattr(v, "value", v)
    return out


def run_version(v):
    is2 = v.startswith("2")
    not_found = R.OBJECT_NOT_FOUND if is2 else R.ITEM_NOT_FOUND
    wrong_state = R.WRONG_KEY_LIFECYCLE_STATE if is2 else R.PERMISSION_DENIED
    destroyed = R.OBJECT_DESTROYED if is2 else R.ITEM_NOT_FOUND
    t = "[%s] " % v
    with client(v) as c:
        def dv():
            r = c.proxy.discover_versions()
            assert r.result_status.value == enums.ResultStatus.SUCCESS, r.result_message
            got = [str(x) for x in r.protocol_versions]
            assert "1.0" in got and "2.0" in got, got
            return ", ".join(got)
        check(t + "discover versions", dv)

        def query():
            r = c.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS,
                                               enums.QueryFunction.QUERY_OBJECTS,
                                               enums.QueryFunction.QUERY_SERVER_INFORMATION])
            assert r.result_status.value == enums.ResultStatus.SUCCESS, r.result_message
            ops = {o.name for o in r.operations}
            for o in ("CREATE", "GET", "LOCATE", "DESTROY", "REVOKE", "ACTIVATE", "REGISTER"):
                assert o in ops, (o, ops)
            vid = r.vendor_identification
            vid = getattr(vid, "value", vid)
            assert "atrest" in str(vid), vid
            return "%s; %d operations" % (vid, len(ops))
        check(t + "query", query)

        for bits in (128, 192, 256):
            name = "%s-%s-aes%d" % (RUN, v, bits)
            u = {}

            def create():
                u["id"] = c.create(enums.CryptographicAlgorithm.AES, bits, name=name,
                                   cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT,
                                                             enums.CryptographicUsageMask.DECRYPT])
                return u["id"]
            check(t + "create aes-%d" % bits, create)
            if "id" not in u:
                continue
            uid = u["id"]

            def pre():
                a = attrs(c, uid)
                assert a.get("State") == enums.State.PRE_ACTIVE, a
                assert a.get("Cryptographic Length") == bits, a
                assert a.get("Cryptographic Algorithm") == enums.CryptographicAlgorithm.AES, a
                for n in ("Unique Identifier", "Object Type", "Initial Date", "Last Change Date"):
                    assert n in a, (n, sorted(a))
                return ", ".join(sorted(a))
            check(t + "get attributes (pre-active)", pre)

            def attr_list():
                names = c.get_attribute_list(uid)
                assert "State" in names and "Cryptographic Length" in names, names
                return "%d names" % len(names)
            check(t + "get attribute list", attr_list)
            check(t + "activate", lambda: c.activate(uid))

            def get():
                k = c.get(uid)
                assert len(k.value) * 8 == bits, len(k.value)
                return "%d bytes" % len(k.value)
            check(t + "get aes-%d" % bits, get)

            def active():
                a = attrs(c, uid, ["State", "Activation Date"])
                assert a.get("State") == enums.State.ACTIVE, a
                assert "Activation Date" in a, a
            check(t + "get attributes (active, by name)", active)

            def locate():
                found = c.locate(attributes=[AF.create_attribute(enums.AttributeType.NAME, name)])
                assert found == [uid], found
                return "by Name"
            check(t + "locate by name", locate)
            check(t + "destroy of an active key refused",
                  lambda: expect(lambda: c.destroy(uid), wrong_state))

            def revoke():
                c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
                a = attrs(c, uid)
                assert a.get("State") == enums.State.DEACTIVATED, a
                assert "Deactivation Date" in a, a
            check(t + "revoke (cessation) -> deactivated", revoke)
            check(t + "destroy", lambda: c.destroy(uid))
            check(t + "get of a destroyed key fails",
                  lambda: expect(lambda: c.get(uid), destroyed))

            def destroyed_state():
                a = attrs(c, uid, ["State", "Destroy Date"])
                assert a.get("State") == enums.State.DESTROYED, a
                assert "Destroy Date" in a, a
            check(t + "destroyed key keeps its attributes", destroyed_state)

        def compromise():
            u = c.create(enums.CryptographicAlgorithm.AES, 256,
                         cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT])
            c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, u,
                     compromise_occurrence_date=int(time.time()) - 60)
            a = attrs(c, u)
            assert a.get("State") == enums.State.COMPROMISED, a
            c.destroy(u)
            a = attrs(c, u)
            assert a.get("State") == enums.State.DESTROYED_COMPROMISED, a
            return "pre-active -> compromised -> destroyed compromised"
        check(t + "revoke (key compromise) and destroy", compromise)

        def locate_filters():
            n = "%s-%s-filters" % (RUN, v)
            u = c.create(enums.CryptographicAlgorithm.AES, 128, name=n,
                         cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT])
            c.activate(u)
            by_state = c.locate(attributes=[AF.create_attribute(enums.AttributeType.STATE,
                                                                enums.State.ACTIVE)])
            assert u in by_state, by_state
            by_type = c.locate(attributes=[AF.create_attribute(
                enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)])
            assert u in by_type, by_type
            by_alg = c.locate(attributes=[
                AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                                    enums.CryptographicAlgorithm.AES),
                AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 128)])
            assert u in by_alg, by_alg
            pre = c.locate(attributes=[AF.create_attribute(enums.AttributeType.STATE,
                                                           enums.State.PRE_ACTIVE)])
            assert u not in pre, pre
            c.revoke(enums.RevocationReasonCode.SUPERSEDED, u)
            c.destroy(u)
            assert u not in c.locate(), "destroyed key still listed"
            return "state, object type, algorithm+length"
        check(t + "locate by state, object type, algorithm", locate_filters)

        def register():
            material = os.urandom(32)
            key = pobjects.SymmetricKey(enums.CryptographicAlgorithm.AES, 256, material,
                                        masks=[enums.CryptographicUsageMask.ENCRYPT,
                                               enums.CryptographicUsageMask.DECRYPT],
                                        name="%s-%s-registered" % (RUN, v))
            u = c.register(key)
            got = c.get(u).value
            assert got == material, "Get returned different bytes"
            c.destroy(u)
            return u
        check(t + "register and get back the same bytes", register)

        def xts512():
            u = c.create(enums.CryptographicAlgorithm.AES, 512,
                         cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT])
            n = len(c.get(u).value)
            c.destroy(u)
            assert n == 64, n
            return "64 bytes"
        check(t + "create 512-bit material (XTS-AES-256)", xts512)

        def bad_length():
            return expect(lambda: c.create(enums.CryptographicAlgorithm.AES, 100),
                          R.INVALID_FIELD)
        check(t + "create with a bad length refused", bad_length)
        check(t + "get of an unknown id", lambda: expect(
            lambda: c.get("00000000-0000-4000-8000-000000000000"), not_found))

        shared = c.create(enums.CryptographicAlgorithm.AES, 256,
                          cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT])

    if E.get("KMIP_OTHER_CLIENT_CERT"):
        with client(v, E["KMIP_OTHER_CLIENT_CERT"], E["KMIP_OTHER_CLIENT_KEY"],
                    E["KMIP_OTHER_USERNAME"], E["KMIP_OTHER_PASSWORD"]) as o:
            check(t + "another client cannot get the key",
                  lambda: expect(lambda: o.get(shared), not_found))
            check(t + "another client cannot destroy the key",
                  lambda: expect(lambda: o.destroy(shared), not_found))

            def other_locate():
                assert shared not in o.locate()
            check(t + "another client does not locate the key", other_locate)
        # The other client's password with this client's certificate.
        with client(v, password=E["KMIP_OTHER_PASSWORD"]) as w:
            check(t + "password of another client refused",
                  lambda: expect(lambda: w.get(shared), R.AUTHENTICATION_NOT_SUCCESSFUL))
        with client(v, username=E["KMIP_OTHER_USERNAME"], password=E["KMIP_OTHER_PASSWORD"]) as w:
            check(t + "another client's credential with this certificate refused",
                  lambda: expect(lambda: w.get(shared), R.AUTHENTICATION_NOT_SUCCESSFUL))
    with client(v, password="definitely-not-the-password") as w:
        check(t + "wrong password refused",
              lambda: expect(lambda: w.get(shared), R.AUTHENTICATION_NOT_SUCCESSFUL))
    with client(v) as c:
        check(t + "destroy the shared key", lambda: c.destroy(shared))


def main():
    versions = sys.argv[1:] or ["1.0", "1.1", "1.2", "1.3", "1.4", "2.0"]
    for v in versions:
        run_version(v)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
