//! Frames for BPF_PROG_TEST_RUN tests: an Ethernet/IPv4/TCP (or ICMP error) builder with
//! correct checksums, a parser, and checksum verification computed from scratch (RFC 1071 over
//! the whole header or segment), independent of the incremental updates the programs make.

use std::net::Ipv4Addr;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub type Mac = [u8; 6];

/// The Internet checksum of `data` (16-bit big-endian words, odd byte padded).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment in an IPv4 packet in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Tcp4 {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// The IPv4 flags/fragment-offset field (host order), e.g. `0x4000` for DF.
    pub frag: u16,
    /// TCP options (a multiple of 4 bytes).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp4 {
    pub fn new(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16, flags: u8) -> Tcp4 {
        Tcp4 {
            src_mac: [0x02, 0, 0, 0, 0xaa, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0xbb, 0x01],
            saddr,
            daddr,
            sport,
            dport,
            seq: 1000,
            ack: if flags & TCP_ACK != 0 { 2000 } else { 0 },
            flags,
            ttl: 64,
            ip_options: Vec::new(),
            frag: 0x4000,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Adds an MSS option (as the first option, where stacks put it).
    pub fn mss(mut self, mss: u16) -> Tcp4 {
        let mut opts = vec![2, 4];
        opts.extend_from_slice(&mss.to_be_bytes());
        opts.extend_from_slice(&self.tcp_options);
        self.tcp_options = opts;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Tcp4 {
        self.payload = payload.to_vec();
        self
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Tcp4 {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// The frame, checksums filled in.
    pub fn build(&self) -> Vec<u8> {
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(((5 + self.tcp_options.len() / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.tcp_options);
        tcp.extend_from_slice(&self.payload);
        let c = checksum(&pseudo_then(self.saddr, self.daddr, 6, &tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        ipv4_frame(
            self.src_mac,
            self.dst_mac,
            self.saddr,
            self.daddr,
            6,
            self.ttl,
            self.frag,
            &self.ip_options,
            &tcp,
        )
    }
}

fn pseudo_then(saddr: Ipv4Addr, daddr: Ipv4Addr, proto: u8, segment: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + segment.len());
    v.extend_from_slice(&saddr.octets());
    v.extend_from_slice(&daddr.octets());
    v.push(0);
    v.push(proto);
    v.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    v.extend_from_slice(segment);
    v
}

/// An Ethernet frame carrying an IPv4 packet with `body` as its payload.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_frame(
    src_mac: Mac,
    dst_mac: Mac,
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    proto: u8,
    ttl: u8,
    frag: u16,
    options: &[u8],
    body: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let ihl = 5 + options.len() / 4;
    let mut ip = Vec::with_capacity(ihl * 4 + body.len());
    ip.push(0x40 | ihl as u8);
    ip.push(0);
    ip.extend_from_slice(&((ihl * 4 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&0x1234u16.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.push(ttl);
    ip.push(proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&saddr.octets());
    ip.extend_from_slice(&daddr.octets());
    ip.extend_from_slice(options);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(body);
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

/// An ICMP error (`ty`/`code`, with `mtu` for "fragmentation needed") from `saddr` to
/// `daddr`, quoting the IPv4 packet of `quoted_frame` (its first 28 + `extra` bytes).
pub fn icmp_error(
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    ty: u8,
    code: u8,
    mtu: u16,
    quoted_frame: &[u8],
    extra: usize,
) -> Vec<u8> {
    let quoted = &quoted_frame[14..];
    let take = (28 + extra).min(quoted.len());
    let mut icmp = vec![ty, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quoted[..take]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(
        [0x02, 0, 0, 0, 0xcc, 0x01],
        [0x02, 0, 0, 0, 0xbb, 0x02],
        saddr,
        daddr,
        1,
        64,
        0,
        &[],
        &icmp,
    )
}

/// The fields of a parsed Ethernet/IPv4 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// TCP ports and flags (zero for other protocols).
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// The IPv4 payload.
    pub l4: Vec<u8>,
}

/// Parses an Ethernet/IPv4 frame; `None` if it is not one.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip.len() < total || total < ihl {
        return None;
    }
    let l4 = ip[ihl..total].to_vec();
    let (sport, dport, flags) = if ip[9] == 6 && l4.len() >= 20 {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
            l4[13],
        )
    } else {
        (0, 0, 0)
    };
    Some(Parsed {
        dst_mac: frame[0..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        saddr: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        daddr: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        proto: ip[9],
        sport,
        dport,
        flags,
        l4,
    })
}

/// Whether the frame's IPv4 header checksum is right.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    checksum(&frame[14..14 + ihl]) == 0
}

/// Whether the frame's TCP checksum (over the pseudo-header and the whole segment) is right.
pub fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let Some(p) = parse(frame) else {
        return false;
    };
    p.proto == 6 && checksum(&pseudo_then(p.saddr, p.daddr, 6, &p.l4)) == 0
}

/// Whether the frame's ICMP checksum is right.
pub fn icmp_checksum_ok(frame: &[u8]) -> bool {
    parse(frame).is_some_and(|p| p.proto == 1 && checksum(&p.l4) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_corrupted_ones_do_not() {
        let f = Tcp4::new(
            Ipv4Addr::new(10, 0, 0, 1),
            40000,
            Ipv4Addr::new(10, 0, 0, 2),
            80,
            TCP_SYN,
        )
        .payload(b"hello, odd length")
        .build();
        assert!(ipv4_checksum_ok(&f) && tcp_checksum_ok(&f));
        let p = parse(&f).expect("parses");
        assert_eq!((p.sport, p.dport, p.flags, p.ttl), (40000, 80, TCP_SYN, 64));
        let mut bad = f.clone();
        bad[14 + 12] ^= 1;
        assert!(!ipv4_checksum_ok(&bad) && !tcp_checksum_ok(&bad));
        let mut bad = f;
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert!(!tcp_checksum_ok(&bad));
    }

    #[test]
    fn icmp_errors_quote_the_packet() {
        let quoted = Tcp4::new(
            Ipv4Addr::new(10, 0, 0, 1),
            40000,
            Ipv4Addr::new(10, 0, 0, 2),
            80,
            TCP_ACK,
        )
        .build();
        let e = icmp_error(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            3,
            4,
            1400,
            &quoted,
            8,
        );
        assert!(ipv4_checksum_ok(&e) && icmp_checksum_ok(&e));
        let p = parse(&e).expect("parses");
        assert_eq!(&p.l4[8..8 + 36], &quoted[14..14 + 36]);
    }
}
