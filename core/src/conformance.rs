//! A conformance kit that any codec can be run through (feature `testkit`).
//!
//! Give it the protocol and a few real frames, requests and responses, each one complete
//! message with its whole body; [`Conformance::run`] then checks what the engine relies on:
//!
//! - **round trip**: every sample decodes to one head (and its body pieces), consuming
//!   exactly its bytes, and re-encoding it unchanged gives back the same bytes;
//! - **splits**: the sample split in two at every possible position, and fed one byte at
//!   a time, decodes to the same head and the same body bytes;
//! - **mutation**: adding an attribute (and changing the one a sample names with
//!   [`Sample::changing`]) is visible after re-encoding and
//!   decoding again, and nothing else changed (samples whose wire format has no place for
//!   attributes are marked with [`Sample::no_metadata_section`]);
//! - **request-id rewrite** (multiplexing protocols): a request encoded with another id
//!   decodes with that id, alone and together with a mutation;
//! - **local replies**: for every request and every [`LocalReplyKind`], the protocol's
//!   local reply encodes on the client side and decodes on the proxy's upstream side as a
//!   response to that request;
//! - **random input**: random bytes and damaged samples never make the codec panic.
//!
//! Failures panic with the check, the sample and what differed, so the kit is called
//! from an ordinary `#[test]`:
//!
//! ```ignore
//! Conformance::new(Arc::new(MyProtocol))
//!     .request(Sample::new("hello", hello_request_bytes))
//!     .response(Sample::new("hello reply", hello_response_bytes))
//!     .run();
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::codec::{Codec, CodecOptions, EncodedFrame, Protocol, ProtocolOptions, Side};
use crate::message::{LocalReply, LocalReplyKind, Message, MessageKind, StreamState};

/// One complete message on the wire, with its body.
#[derive(Clone, Debug)]
pub struct Sample {
    name: String,
    bytes: Bytes,
    mutable: bool,
    request: Option<Bytes>,
    change: Option<String>,
}

impl Sample {
    /// A sample called `name` (used in failure messages).
    pub fn new(name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            bytes: bytes.into(),
            mutable: true,
            request: None,
            change: None,
        }
    }

    /// An attribute of the sample that the mutation check also changes (besides adding
    /// one). Choose one the wire carries as an attribute of its own, not one derived
    /// from a fixed header (Dubbo's `interface`) or tied to another (HTTP's `host`).
    pub fn changing(mut self, key: impl Into<String>) -> Self {
        self.change = Some(key.into());
        self
    }

    /// For a response: the request it answers. The kit hands both to
    /// [`Protocol::finish_response`] before it changes the response's attributes, as the
    /// proxy does (a protocol may carry response attributes only to clients that take
    /// them).
    pub fn in_reply_to(mut self, request: impl Into<Bytes>) -> Self {
        self.request = Some(request.into());
        self
    }

    /// Marks a sample whose wire format has nowhere to carry changed attributes (a Thrift
    /// message without THeader): the mutation check is skipped for it.
    pub fn no_metadata_section(mut self) -> Self {
        self.mutable = false;
        self
    }
}

/// What a run checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Samples run through every check.
    pub samples: usize,
    /// Split positions decoded.
    pub splits: usize,
    /// Local replies built and decoded.
    pub local_replies: usize,
    /// Random and damaged inputs decoded without a panic.
    pub random_inputs: usize,
}

/// The kit: a protocol, its options and the samples to run.
pub struct Conformance {
    protocol: Arc<dyn Protocol>,
    options: ProtocolOptions,
    requests: Vec<Sample>,
    responses: Vec<Sample>,
    random_rounds: usize,
    seed: u64,
}

/// A sample decoded: its head and its body pieces.
struct Decoded {
    head: Message,
    pieces: Vec<Message>,
}

impl Decoded {
    fn body(&self) -> Vec<u8> {
        self.pieces
            .iter()
            .flat_map(|p| p.frame.iter().copied())
            .collect()
    }
}

impl Conformance {
    /// A kit for `protocol` with no samples yet.
    pub fn new(protocol: Arc<dyn Protocol>) -> Self {
        Self {
            protocol,
            options: ProtocolOptions::new(),
            requests: Vec::new(),
            responses: Vec::new(),
            random_rounds: 2000,
            seed: 0x6d65_7461_6d65_7368,
        }
    }

    /// Protocol options every codec instance gets.
    pub fn options(mut self, options: ProtocolOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a request sample (decoded as the proxy's client side does).
    pub fn request(mut self, sample: Sample) -> Self {
        self.requests.push(sample);
        self
    }

    /// Adds a response sample (decoded as the proxy's upstream side does).
    pub fn response(mut self, sample: Sample) -> Self {
        self.responses.push(sample);
        self
    }

    /// How many random inputs to try (default 2000) and the seed they come from.
    pub fn random_inputs(mut self, rounds: usize, seed: u64) -> Self {
        self.random_rounds = rounds;
        self.seed = seed;
        self
    }

    fn codec(&self, side: Side) -> Box<dyn Codec> {
        let options = CodecOptions {
            protocol_options: Arc::new(self.options.clone()),
            ..CodecOptions::new(side)
        };
        self.protocol.codec(&options)
    }

    /// Runs every check; panics on the first failure.
    pub fn run(&self) -> Report {
        assert!(
            !self.requests.is_empty(),
            "conformance: give at least one request sample"
        );
        if let Err(e) = self.protocol.validate_options(&self.options) {
            panic!("conformance: the protocol refuses the options: {e}");
        }
        let mut report = Report::default();
        for (side, samples) in [
            (Side::Downstream, &self.requests),
            (Side::Upstream, &self.responses),
        ] {
            for s in samples {
                let whole = self.round_trip(side, s);
                report.splits += self.splits(side, s, &whole);
                if s.mutable {
                    self.mutation(side, s, &whole);
                }
                if side == Side::Downstream {
                    if self.protocol.multiplexing() {
                        self.id_rewrite(s, &whole);
                    }
                    report.local_replies += self.local_replies(s, &whole);
                }
                report.samples += 1;
            }
        }
        report.random_inputs = self.random();
        report
    }

    /// Decodes all of `bytes` in one go, requiring exactly one message and its body.
    fn decode_all(&self, side: Side, name: &str, bytes: &[u8], check: &str) -> Decoded {
        let mut codec = self.codec(side);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => panic!("conformance/{check}: {name}: decode failed: {e}"),
            }
        }
        assert!(
            buf.is_empty(),
            "conformance/{check}: {name}: {} bytes left undecoded",
            buf.len()
        );
        into_decoded(out, name, check)
    }

    fn round_trip(&self, side: Side, s: &Sample) -> Decoded {
        let d = self.decode_all(side, &s.name, &s.bytes, "round_trip");
        let want_request = side == Side::Downstream;
        assert!(
            if want_request {
                d.head.kind.is_request()
            } else {
                d.head.kind.is_response()
            },
            "conformance/round_trip: {}: decoded as {:?}",
            s.name,
            d.head.kind
        );
        assert!(
            !d.head.metadata.is_dirty(),
            "conformance/round_trip: {}: decoded metadata is marked changed",
            s.name
        );
        let encoded = self.encode_all(side.other(), &d, d.head.request_id, "round_trip", &s.name);
        assert!(
            encoded == s.bytes,
            "conformance/round_trip: {}: re-encoding an unchanged message changed its bytes\n\
             sample:  {}\nencoded: {}",
            s.name,
            hex(&s.bytes),
            hex(&encoded)
        );
        d
    }

    /// Encodes a decoded message (head and pieces) with a codec of `side`.
    fn encode_all(&self, side: Side, d: &Decoded, id: u64, check: &str, name: &str) -> Bytes {
        let mut codec = self.codec(side);
        let mut out = BytesMut::new();
        for m in std::iter::once(&d.head).chain(&d.pieces) {
            let mut frame = EncodedFrame::new();
            let id = if m.kind == MessageKind::Data {
                m.request_id
            } else {
                id
            };
            if let Err(e) = codec.encode(m, id, &mut frame) {
                panic!("conformance/{check}: {name}: encode failed: {e}");
            }
            for p in frame.parts() {
                out.extend_from_slice(p);
            }
        }
        out.freeze()
    }

    fn splits(&self, side: Side, s: &Sample, whole: &Decoded) -> usize {
        let bytes = &s.bytes[..];
        let mut n = 0;
        for at in 0..=bytes.len() {
            let got = self.decode_chunks(side, s, &[&bytes[..at], &bytes[at..]], at);
            same_message(whole, &got, &s.name, &format!("split at {at}"));
            n += 1;
        }
        if bytes.len() <= 16 * 1024 {
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let got = self.decode_chunks(side, s, &singles, usize::MAX);
            same_message(whole, &got, &s.name, "one byte at a time");
        }
        n
    }

    fn decode_chunks(&self, side: Side, s: &Sample, chunks: &[&[u8]], at: usize) -> Decoded {
        let mut codec = self.codec(side);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => panic!(
                        "conformance/splits: {}: decode failed with the frame split at {at}: {e}",
                        s.name
                    ),
                }
            }
        }
        assert!(
            buf.is_empty(),
            "conformance/splits: {}: {} bytes left undecoded (split at {at})",
            s.name,
            buf.len()
        );
        into_decoded(out, &s.name, "splits")
    }

    fn mutation(&self, side: Side, s: &Sample, whole: &Decoded) {
        let mut changed = Decoded {
            head: whole.head.clone(),
            pieces: whole.pieces.clone(),
        };
        if let Some(req) = &s.request {
            let req = self.decode_all(Side::Downstream, &s.name, req, "mutation");
            self.protocol.finish_response(&req.head, &mut changed.head);
        }
        changed.head.metadata.set("x-conformance", "added");
        let existing = s.change.clone();
        if let Some(k) = &existing {
            assert!(
                whole.head.metadata.contains(k),
                "conformance/mutation: {}: the sample has no attribute {k:?} to change",
                s.name
            );
            changed.head.metadata.set(k.clone(), "changed");
        }
        let bytes = self.encode_all(
            side.other(),
            &changed,
            whole.head.request_id,
            "mutation",
            &s.name,
        );
        let again = self.decode_all(side, &s.name, &bytes, "mutation");
        let m = &again.head.metadata;
        assert_eq!(
            m.get("x-conformance"),
            Some("added"),
            "conformance/mutation: {}: an added attribute is missing after re-decoding",
            s.name
        );
        if let Some(k) = &existing {
            assert_eq!(
                m.get(k),
                Some("changed"),
                "conformance/mutation: {}: a changed attribute {k:?} did not change",
                s.name
            );
        }
        for (k, v) in whole.head.metadata.iter() {
            if existing.as_deref() == Some(k) {
                continue;
            }
            assert_eq!(
                m.get(k),
                Some(v),
                "conformance/mutation: {}: attribute {k:?} changed though nobody touched it",
                s.name
            );
        }
        assert_eq!(
            again.head.kind, whole.head.kind,
            "conformance/mutation: {}: kind",
            s.name
        );
        assert_eq!(
            again.head.request_id, whole.head.request_id,
            "conformance/mutation: {}: request id",
            s.name
        );
        assert!(
            again.body() == whole.body(),
            "conformance/mutation: {}: the body changed",
            s.name
        );
    }

    fn id_rewrite(&self, s: &Sample, whole: &Decoded) {
        for id in [
            1u64,
            0x1234_5678,
            0x7fff_fffe,
            whole.head.request_id.wrapping_add(1) & 0x7fff_ffff,
        ] {
            let bytes = self.encode_all(Side::Upstream, whole, id, "id_rewrite", &s.name);
            let again = self.decode_all(Side::Downstream, &s.name, &bytes, "id_rewrite");
            assert_eq!(
                again.head.request_id, id,
                "conformance/id_rewrite: {}: encoded with id {id}, decoded {}",
                s.name, again.head.request_id
            );
            assert_eq!(
                again.head.metadata, whole.head.metadata,
                "conformance/id_rewrite: {}: attributes changed with the id",
                s.name
            );
            if s.mutable {
                let mut changed = Decoded {
                    head: whole.head.clone(),
                    pieces: whole.pieces.clone(),
                };
                changed.head.metadata.set("x-conformance", "with-id");
                let bytes = self.encode_all(Side::Upstream, &changed, id, "id_rewrite", &s.name);
                let again = self.decode_all(Side::Downstream, &s.name, &bytes, "id_rewrite");
                assert_eq!(
                    again.head.request_id, id,
                    "conformance/id_rewrite: {}: id with mutation",
                    s.name
                );
                assert_eq!(
                    again.head.metadata.get("x-conformance"),
                    Some("with-id"),
                    "conformance/id_rewrite: {}: mutation lost with the id change",
                    s.name
                );
            }
        }
    }

    fn local_replies(&self, s: &Sample, whole: &Decoded) -> usize {
        if whole.head.kind == MessageKind::OnewayRequest {
            return 0;
        }
        let mut n = 0;
        for kind in LocalReplyKind::ALL {
            // The client side has decoded the request; the far side has encoded it.
            let mut server_side = self.codec(Side::Downstream);
            let mut buf = BytesMut::from(&s.bytes[..]);
            while let Ok(Some(_)) = server_side.decode(&mut buf) {}
            let mut client_side = self.codec(Side::Upstream);
            let mut sink = EncodedFrame::new();
            let _ = client_side.encode(&whole.head, whole.head.request_id, &mut sink);

            let text = format!("conformance {}", kind.as_str());
            let reply = self.protocol.local_reply(
                &whole.head,
                LocalReply {
                    kind,
                    message: &text,
                },
            );
            let mut frame = EncodedFrame::new();
            if let Err(e) = server_side.encode(&reply, reply.request_id, &mut frame) {
                panic!(
                    "conformance/local_reply: {}: {kind:?}: encode failed: {e}",
                    s.name
                );
            }
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let mut out = Vec::new();
            loop {
                match client_side.decode(&mut buf) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => panic!(
                        "conformance/local_reply: {}: {kind:?}: the client cannot decode the reply: {e}",
                        s.name
                    ),
                }
            }
            if let Ok(Some(m)) = client_side.decode_eof(&mut buf) {
                out.push(m);
            }
            let d = into_decoded(out, &s.name, "local_reply");
            assert!(
                d.head.kind.is_response(),
                "conformance/local_reply: {}: {kind:?} decodes as {:?}, not a response",
                s.name,
                d.head.kind
            );
            if self.protocol.multiplexing() {
                assert_eq!(
                    d.head.request_id, whole.head.request_id,
                    "conformance/local_reply: {}: {kind:?} answers another request id",
                    s.name
                );
            }
            n += 1;
        }
        n
    }

    fn random(&self) -> usize {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let samples: Vec<&Sample> = self.requests.iter().chain(&self.responses).collect();
        let mut n = 0;
        for round in 0..self.random_rounds {
            let input: Vec<u8> = match round % 4 {
                0 => {
                    let len = rng.gen_range(0..512);
                    (0..len).map(|_| rng.gen()).collect()
                }
                1 => {
                    // A sample with a few bytes flipped.
                    let s = &samples[rng.gen_range(0..samples.len())].bytes;
                    let mut v = s.to_vec();
                    for _ in 0..rng.gen_range(1..4) {
                        if !v.is_empty() {
                            let i = rng.gen_range(0..v.len());
                            v[i] ^= 1 << rng.gen_range(0..8);
                        }
                    }
                    v
                }
                2 => {
                    // A sample cut short, or with random bytes in the middle.
                    let s = &samples[rng.gen_range(0..samples.len())].bytes;
                    let cut = rng.gen_range(0..=s.len());
                    let mut v = s[..cut].to_vec();
                    if rng.gen_bool(0.5) {
                        v.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>()));
                        v.extend_from_slice(&s[cut..]);
                    }
                    v
                }
                _ => {
                    // A sample with a byte in its first 16 set to an extreme value.
                    let s = &samples[rng.gen_range(0..samples.len())].bytes;
                    let mut v = s.to_vec();
                    if !v.is_empty() {
                        let i = rng.gen_range(0..v.len().min(16));
                        v[i] = [0x00, 0x7f, 0x80, 0xff][rng.gen_range(0..4)];
                    }
                    v
                }
            };
            for side in [Side::Downstream, Side::Upstream] {
                let r = catch_unwind(AssertUnwindSafe(|| self.feed(side, &input)));
                if r.is_err() {
                    panic!(
                        "conformance/random: the {side:?} codec panicked on input {}",
                        hex(&input)
                    );
                }
                n += 1;
            }
        }
        n
    }

    /// Decodes `input` in two pieces until the codec needs more or fails, then at EOF.
    fn feed(&self, side: Side, input: &[u8]) {
        let mut codec = self.codec(side);
        let mut buf = BytesMut::new();
        let half = input.len() / 2;
        for part in [&input[..half], &input[half..]] {
            buf.extend_from_slice(part);
            for _ in 0..10_000 {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => {
                        let mut f = EncodedFrame::new();
                        let _ = codec.encode(&m, m.request_id, &mut f);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        let _ = codec.decode_eof(&mut buf);
    }
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Downstream => Side::Upstream,
            Side::Upstream => Side::Downstream,
        }
    }
}

fn into_decoded(mut out: Vec<Message>, name: &str, check: &str) -> Decoded {
    assert!(
        !out.is_empty(),
        "conformance/{check}: {name}: nothing decoded"
    );
    let pieces = out.split_off(1);
    let head = out.remove(0);
    assert_ne!(
        head.kind,
        MessageKind::Data,
        "conformance/{check}: {name}: the first message is a body piece"
    );
    match head.stream {
        StreamState::End | StreamState::Upgrade => assert!(
            pieces.is_empty(),
            "conformance/{check}: {name}: {} messages after a complete one (give one message per sample)",
            pieces.len()
        ),
        StreamState::More => {
            for (i, p) in pieces.iter().enumerate() {
                assert_eq!(
                    p.kind,
                    MessageKind::Data,
                    "conformance/{check}: {name}: message {} after a head is not a body piece",
                    i + 1
                );
                let last = i + 1 == pieces.len();
                assert_eq!(
                    p.stream == StreamState::End,
                    last,
                    "conformance/{check}: {name}: body piece {} of {} has stream {:?}",
                    i + 1,
                    pieces.len(),
                    p.stream
                );
            }
            assert!(
                !pieces.is_empty(),
                "conformance/{check}: {name}: a head announced a body that never ended"
            );
        }
    }
    Decoded { head, pieces }
}

fn same_message(want: &Decoded, got: &Decoded, name: &str, how: &str) {
    let (a, b) = (&want.head, &got.head);
    assert_eq!(a.kind, b.kind, "conformance/splits: {name}: {how}: kind");
    assert_eq!(
        a.request_id, b.request_id,
        "conformance/splits: {name}: {how}: request id"
    );
    assert_eq!(
        a.status, b.status,
        "conformance/splits: {name}: {how}: status"
    );
    assert_eq!(
        a.metadata, b.metadata,
        "conformance/splits: {name}: {how}: attributes"
    );
    assert_eq!(
        a.stream, b.stream,
        "conformance/splits: {name}: {how}: stream state"
    );
    assert!(
        a.frame == b.frame,
        "conformance/splits: {name}: {how}: head bytes differ"
    );
    assert!(
        want.body() == got.body(),
        "conformance/splits: {name}: {how}: body bytes differ"
    );
}

fn hex(b: &[u8]) -> String {
    const MAX: usize = 512;
    let mut s: String = b.iter().take(MAX).map(|x| format!("{x:02x}")).collect();
    if b.len() > MAX {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{frame, stream_head, StreamTestProtocol, TestProtocol};

    #[test]
    fn the_test_protocols_conform() {
        let req = frame(
            MessageKind::Request,
            7,
            0,
            &[("interface", "a.B"), ("batchjob", "true")],
            b"args",
        );
        let oneway = frame(MessageKind::OnewayRequest, 8, 0, &[("k", "v")], b"");
        let resp = frame(
            MessageKind::Response,
            7,
            0,
            &[("served-by", "x")],
            b"result",
        );
        let report = Conformance::new(Arc::new(TestProtocol))
            .request(Sample::new("request", req).changing("batchjob"))
            .request(Sample::new("oneway", oneway))
            .response(Sample::new("response", resp))
            .random_inputs(500, 1)
            .run();
        assert_eq!(report.samples, 3);
        assert_eq!(report.local_replies, LocalReplyKind::ALL.len());
        assert_eq!(report.random_inputs, 1000);

        let mut with_body = stream_head(MessageKind::Request, 1, &[("mode", "echo")], 300).to_vec();
        with_body.extend((0..300).map(|i| i as u8));
        let mut resp = stream_head(MessageKind::Response, 1, &[("a", "b")], 5).to_vec();
        resp.extend_from_slice(b"hello");
        let report = Conformance::new(Arc::new(StreamTestProtocol))
            .request(Sample::new("streamed request", with_body))
            .request(Sample::new(
                "bodiless request",
                stream_head(MessageKind::Request, 2, &[], 0),
            ))
            .response(Sample::new("streamed response", resp))
            .random_inputs(500, 2)
            .run();
        assert_eq!(report.samples, 3);
    }

    /// A codec that loses a mutation must fail the kit.
    struct Forgetful;

    impl Protocol for Forgetful {
        fn name(&self) -> &str {
            "forgetful"
        }
        fn codec(&self, options: &CodecOptions) -> Box<dyn Codec> {
            struct C(Box<dyn Codec>);
            impl Codec for C {
                fn decode(
                    &mut self,
                    buf: &mut BytesMut,
                ) -> Result<Option<Message>, crate::DecodeError> {
                    self.0.decode(buf)
                }
                fn encode(
                    &mut self,
                    msg: &Message,
                    id: u64,
                    out: &mut EncodedFrame,
                ) -> Result<(), crate::EncodeError> {
                    let mut m = msg.clone();
                    m.metadata = crate::Metadata::new();
                    for (k, v) in msg.metadata.iter() {
                        m.metadata.push_decoded(k, v);
                    }
                    self.0.encode(&m, id, out)
                }
            }
            Box::new(C(TestProtocol.codec(options)))
        }
        fn multiplexing(&self) -> bool {
            true
        }
        fn local_reply(&self, request: &Message, reply: LocalReply<'_>) -> Message {
            TestProtocol.local_reply(request, reply)
        }
        fn heartbeat_reply(&self, _: &Message) -> Option<Message> {
            None
        }
    }

    #[test]
    #[should_panic(expected = "conformance/mutation")]
    fn a_codec_that_drops_mutations_fails() {
        let req = frame(MessageKind::Request, 7, 0, &[("k", "v")], b"args");
        Conformance::new(Arc::new(Forgetful))
            .request(Sample::new("request", req))
            .random_inputs(0, 0)
            .run();
    }
}
