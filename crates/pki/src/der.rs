//! The little DER that rcgen does not do for us: wrapping legacy private keys into PKCS#8, the Authority
//! Information Access and Microsoft template extensions, and re-signing a certificate whose issuer or subject
//! name must be the exact bytes of another certificate's name (rcgen cannot express every name, e.g.
//! `DC=aclab, DC=uk` with a repeated attribute type, and chain building compares names byte for byte).

/// Encodes one DER element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes an OBJECT IDENTIFIER from its arcs.
pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        content.extend_from_slice(&tmp);
    };
    push(arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0));
    for arc in arcs.iter().skip(2) {
        push(*arc);
    }
    tlv(0x06, &content)
}

/// One parsed element: its tag and the whole encoding (header included).
pub(crate) struct Element<'a> {
    pub tag: u8,
    pub raw: &'a [u8],
    pub content: &'a [u8],
}

/// Reads one element from the front of `input`.
pub(crate) fn read(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let raw = input.get(..end)?;
    Some((Element { tag, raw, content: &raw[header..] }, &input[end..]))
}

/// The elements inside a constructed element's content.
pub(crate) fn children(content: &[u8]) -> Option<Vec<Element<'_>>> {
    let mut rest = content;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (el, tail) = read(rest)?;
        out.push(el);
        rest = tail;
    }
    Some(out)
}

const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
pub(crate) const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
pub(crate) const P384: &[u64] = &[1, 3, 132, 0, 34];

/// Wraps a PKCS#1 `RSAPrivateKey` into a PKCS#8 `PrivateKeyInfo`.
pub(crate) fn pkcs8_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    let alg = tlv(0x30, &[oid(RSA_ENCRYPTION), vec![0x05, 0x00]].concat());
    tlv(0x30, &[vec![0x02, 0x01, 0x00], alg, tlv(0x04, pkcs1)].concat())
}

/// Wraps a SEC1 `ECPrivateKey` into a PKCS#8 `PrivateKeyInfo` for the given curve.
pub(crate) fn pkcs8_from_sec1(sec1: &[u8], curve: &[u64]) -> Vec<u8> {
    let alg = tlv(0x30, &[oid(EC_PUBLIC_KEY), oid(curve)].concat());
    tlv(0x30, &[vec![0x02, 0x01, 0x00], alg, tlv(0x04, sec1)].concat())
}

/// The value of an Authority Information Access extension (RFC 5280 4.2.2.1) with OCSP responders and
/// CA issuer URLs.
pub(crate) fn authority_info_access(ocsp: &[String], ca_issuers: &[String]) -> Vec<u8> {
    let access = |method: &[u64], url: &String| tlv(0x30, &[oid(method), tlv(0x86, url.as_bytes())].concat());
    let mut content = Vec::new();
    for url in ocsp {
        content.extend(access(&[1, 3, 6, 1, 5, 5, 7, 48, 1], url));
    }
    for url in ca_issuers {
        content.extend(access(&[1, 3, 6, 1, 5, 5, 7, 48, 2], url));
    }
    tlv(0x30, &content)
}

/// A BMPString (UTF-16BE), as Microsoft's certificate-template-name extension wants.
pub(crate) fn bmp_string(s: &str) -> Vec<u8> {
    let bytes: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
    tlv(0x1e, &bytes)
}

/// A Name (RDNSequence), one attribute per RDN, in the order given. Country is a PrintableString,
/// domainComponent and emailAddress IA5Strings, everything else UTF8String.
pub(crate) fn name(attrs: &[(&[u64], &str)]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for (arcs, value) in attrs {
        let tag = match *arcs {
            [2, 5, 4, 6] => 0x13,
            [0, 9, 2342, 19200300, 100, 1, 25] | [1, 2, 840, 113549, 1, 9, 1] => 0x16,
            _ => 0x0c,
        };
        let atv = tlv(0x30, &[oid(arcs), tlv(tag, value.as_bytes())].concat());
        rdns.extend(tlv(0x31, &atv));
    }
    tlv(0x30, &rdns)
}

/// Replaces the issuer and/or subject Name of a DER certificate with the given raw Names and signs the new
/// TBSCertificate with `sign` (same algorithm as before). Returns `None` if the input is not a certificate.
pub(crate) fn replace_names(
    cert: &[u8],
    issuer: Option<&[u8]>,
    subject: Option<&[u8]>,
    sign: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let (outer, _) = read(cert)?;
    let parts = children(outer.content)?;
    let (tbs, sig_alg) = (parts.first()?, parts.get(1)?);
    let fields = children(tbs.content)?;
    // TBSCertificate: [0] version?, serialNumber, signature, issuer, validity, subject, ...
    let base = usize::from(fields.first()?.tag == 0xa0);
    let mut new_tbs = Vec::with_capacity(tbs.content.len() + 64);
    for (i, field) in fields.iter().enumerate() {
        let replacement = match i.checked_sub(base) {
            Some(2) => issuer,
            Some(4) => subject,
            _ => None,
        };
        new_tbs.extend_from_slice(replacement.unwrap_or(field.raw));
    }
    let new_tbs = tlv(0x30, &new_tbs);
    let signature = sign(&new_tbs)?;
    let mut bits = vec![0u8];
    bits.extend(signature);
    Some(tlv(0x30, &[new_tbs, sig_alg.raw.to_vec(), tlv(0x03, &bits)].concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lengths_and_oids_like_openssl() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        // 1.3.6.1.4.1.311.20.2 (Microsoft certificate template name)
        assert_eq!(oid(&[1, 3, 6, 1, 4, 1, 311, 20, 2]), vec![0x06, 0x09, 0x2b, 6, 1, 4, 1, 0x82, 0x37, 0x14, 2]);
        assert_eq!(bmp_string("SubCA"), vec![0x1e, 10, 0, b'S', 0, b'u', 0, b'b', 0, b'C', 0, b'A']);
        let (el, rest) = read(&long).expect("parses");
        assert_eq!(el.content.len(), 300);
        assert!(rest.is_empty());
        assert!(read(&[0x30, 0x05, 0x00]).is_none(), "truncated input is refused");
    }
}
