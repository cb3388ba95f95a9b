//! The little of RFC 6455 the splice needs: follow frame boundaries in a byte stream without
//! looking at payloads, and encode the few frames the proxy itself sends.
//!
//! The proxy copies bytes; it never re-encodes frames. To inject its reset frame it must write
//! at a *message* boundary (§5.4: data frames of one fragmented message must not be interleaved
//! with other data frames; control frames may be), so [`FrameTracker`] follows each direction's
//! frame headers (§5.2) and counts payload bytes down.

/// Opcode of a continuation frame (§5.2).
const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask (§5.2).
const MAX_HEADER_BYTES: usize = 14;

/// A frame whose payload is over the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooBig {
    /// The declared payload length.
    pub len: u64,
    /// Where the offending frame's header starts in the chunk just fed, when it starts there
    /// (bytes before it are whole frames and may be forwarded). `None` when the header began in
    /// an earlier chunk, which has already been forwarded in part.
    pub header_start: Option<usize>,
}

/// Follows frame boundaries in one direction of a WebSocket connection.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Bytes of the current header gathered so far (headers can straddle reads).
    header: [u8; MAX_HEADER_BYTES],
    /// How many bytes of `header` are filled; 0 at a frame boundary outside a payload.
    have: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Inside a fragmented data message (a data frame without FIN was seen, §5.4).
    in_message: bool,
    /// A close frame has passed: nothing may follow it in this direction (§5.5.1).
    closed: bool,
    /// Largest payload accepted.
    max_payload: u64,
}

impl FrameTracker {
    /// A tracker at the start of a stream.
    pub fn new(max_payload: u64) -> Self {
        FrameTracker {
            header: [0; MAX_HEADER_BYTES],
            have: 0,
            remaining: 0,
            in_message: false,
            closed: false,
            max_payload,
        }
    }

    /// Between two frames.
    pub fn at_frame_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Between two frames and not inside a fragmented message: a new data frame may go here.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && !self.in_message
    }

    /// Whether a close frame has passed in this direction.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Follows `data`. With `stop_at_message_boundary`, stops right after the first point where
    /// a whole message has ended (or at once, if already there) and returns how many bytes lead
    /// up to it; otherwise consumes everything and returns `data.len()`.
    pub fn feed(
        &mut self,
        data: &[u8],
        stop_at_message_boundary: bool,
    ) -> Result<usize, FrameTooBig> {
        let mut pos = 0;
        loop {
            if stop_at_message_boundary && self.at_message_boundary() {
                return Ok(pos);
            }
            if pos == data.len() {
                return Ok(pos);
            }
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - pos) as u64);
                self.remaining -= take;
                pos += take as usize;
                continue;
            }
            // The usual case: a whole header in this chunk, read where it lies.
            if self.have == 0
                && let Some(&b1) = data.get(pos + 1)
                && let Some(header) = data.get(pos..pos + header_len(b1))
            {
                self.enter_frame(header, Some(pos))?;
                pos += header.len();
                continue;
            }
            // A header straddling reads: gather it until its length is known.
            let header_start = (self.have == 0).then_some(pos);
            while pos < data.len() {
                let need = self.gathered_header_len();
                if usize::from(self.have) >= need {
                    break;
                }
                self.header[usize::from(self.have)] = data[pos];
                self.have += 1;
                pos += 1;
            }
            let need = self.gathered_header_len();
            if usize::from(self.have) < need {
                return Ok(pos);
            }
            let header = self.header;
            self.enter_frame(&header[..need], header_start)?;
        }
    }

    /// Starts the frame whose whole `header` has been read.
    fn enter_frame(
        &mut self,
        header: &[u8],
        header_start: Option<usize>,
    ) -> Result<(), FrameTooBig> {
        let len = payload_len(header);
        if len > self.max_payload {
            return Err(FrameTooBig { len, header_start });
        }
        let fin = header[0] & 0x80 != 0;
        match header[0] & 0x0f {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => self.in_message = !fin,
            OP_CLOSE => self.closed = true,
            _ => {}
        }
        self.have = 0;
        self.remaining = len;
        Ok(())
    }

    /// Length of the header being gathered, as far as its bytes so far tell.
    fn gathered_header_len(&self) -> usize {
        if self.have < 2 {
            2
        } else {
            header_len(self.header[1])
        }
    }
}

/// Length of a frame header whose second byte is `b1`: the mask bit and the 7-bit length
/// (126 and 127 announce 2 and 8 bytes of extended length) say it (§5.2).
fn header_len(b1: u8) -> usize {
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

/// The payload length a whole frame header declares.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

/// Appends one frame: FIN set, `opcode`, masked with `mask` when given (client role, §5.3).
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
}

/// A close payload: the code and a reason cut to fit a control frame (§5.5: 125 bytes).
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// An unmasked text frame, as a server sends it (§5.1).
pub fn server_text(out: &mut Vec<u8>, text: &str) {
    push_frame(out, OP_TEXT, text.as_bytes(), None);
}

/// An unmasked close frame, as a server sends it (§5.5.1).
pub fn server_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    push_frame(out, OP_CLOSE, &close_payload(code, reason), None);
}

/// A masked close frame, as a client sends it (§5.3: every client frame is masked).
pub fn client_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: [u8; 4]) {
    push_frame(out, OP_CLOSE, &close_payload(code, reason), Some(mask));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let payload = vec![b'x'; payload_len];
        push_frame(&mut out, opcode, &payload, masked.then_some([1, 2, 3, 4]));
        if !fin {
            out[0] &= 0x7f;
        }
        out
    }

    #[test]
    fn boundaries_are_found_across_every_split_of_the_stream() {
        let mut stream = frame(OP_TEXT, true, 5, false);
        stream.extend(frame(OP_BINARY, true, 300, true));
        stream.extend(frame(OP_TEXT, true, 70_000, false));
        stream.extend(frame(0x9, true, 0, false));
        for split in 0..stream.len() {
            let mut t = FrameTracker::new(1 << 20);
            assert_eq!(t.feed(&stream[..split], false), Ok(split));
            assert_eq!(t.feed(&stream[split..], false), Ok(stream.len() - split));
            assert!(t.at_message_boundary(), "split {split}");
        }
    }

    #[test]
    fn stopping_at_a_message_boundary_skips_fragments_and_allows_control_frames() {
        let first = frame(OP_TEXT, false, 3, false);
        let ping = frame(0x9, true, 2, false);
        let last = frame(OP_CONTINUATION, true, 4, false);
        let next = frame(OP_TEXT, true, 1, false);
        let stream = [first.clone(), ping.clone(), last.clone(), next].concat();
        let mut t = FrameTracker::new(1 << 20);
        // Already at a boundary: stops at once.
        assert_eq!(t.feed(&stream, true), Ok(0));
        assert_eq!(t.feed(&stream[..1], false), Ok(1));
        let upto = t.feed(&stream[1..], true).expect("fits");
        assert_eq!(upto + 1, first.len() + ping.len() + last.len());
        assert!(t.at_message_boundary());
        let mut t = FrameTracker::new(1 << 20);
        assert_eq!(t.feed(&stream[..first.len()], false), Ok(first.len()));
        assert!(t.at_frame_boundary());
        assert!(!t.at_message_boundary());
    }

    #[test]
    fn a_frame_over_the_limit_is_reported_with_where_it_starts() {
        let small = frame(OP_TEXT, true, 10, true);
        let big = frame(OP_BINARY, true, 200, true);
        let stream = [small.clone(), big].concat();
        let mut t = FrameTracker::new(100);
        let err = t.feed(&stream, false).expect_err("too big");
        assert_eq!(err.len, 200);
        assert_eq!(err.header_start, Some(small.len()));
        let mut t = FrameTracker::new(100);
        assert_eq!(
            t.feed(&stream[..small.len() + 1], false),
            Ok(small.len() + 1)
        );
        let err = t
            .feed(&stream[small.len() + 1..], false)
            .expect_err("too big");
        assert_eq!(err.header_start, None);
    }

    #[test]
    fn close_frames_are_seen_and_encoded_per_role() {
        let mut out = Vec::new();
        server_close(&mut out, 4000, "rebalance");
        assert_eq!(&out[..4], &[0x88, 11, 0x0f, 0xa0]);
        assert_eq!(&out[4..], b"rebalance");
        let mut t = FrameTracker::new(1 << 20);
        t.feed(&out, false).expect("fits");
        assert!(t.closed());
        let mut masked = Vec::new();
        client_close(&mut masked, 1001, "", [9, 9, 9, 9]);
        assert_eq!(masked, vec![0x88, 0x82, 9, 9, 9, 9, 0x03 ^ 9, 0xe9 ^ 9]);
        let mut text = Vec::new();
        server_text(&mut text, &"é".repeat(100));
        assert_eq!(&text[..4], &[0x81, 126, 0, 200]);
        let long = "x".repeat(300);
        let mut c = Vec::new();
        server_close(&mut c, 1000, &long);
        assert_eq!(c[1], 125);
    }

    proptest::proptest! {
        /// Fed in any chunks, the tracker agrees with feeding the same bytes one at a time
        /// (which always gathers headers byte by byte) at every chunk end.
        #[test]
        fn chunked_feeding_agrees_with_byte_by_byte(
            frames in proptest::collection::vec(
                (
                    proptest::sample::select(vec![OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, 0x9, 0xa]),
                    proptest::bool::ANY,
                    proptest::prop_oneof![0usize..130, 120usize..300, 65_530usize..65_540, 70_000usize..70_001],
                    proptest::bool::ANY,
                ),
                1..8,
            ),
            cuts in proptest::collection::vec(0usize..200_000, 0..12),
        ) {
            let stream: Vec<u8> = frames
                .iter()
                .flat_map(|&(op, fin, len, masked)| frame(op, fin, len, masked))
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut chunked, mut bytewise) = (FrameTracker::new(1 << 20), FrameTracker::new(1 << 20));
            let mut at = 0;
            for cut in cuts {
                proptest::prop_assert_eq!(chunked.feed(&stream[at..cut], false), Ok(cut - at));
                for b in &stream[at..cut] {
                    proptest::prop_assert_eq!(bytewise.feed(std::slice::from_ref(b), false), Ok(1));
                }
                at = cut;
                proptest::prop_assert_eq!(chunked.at_frame_boundary(), bytewise.at_frame_boundary());
                proptest::prop_assert_eq!(chunked.at_message_boundary(), bytewise.at_message_boundary());
                proptest::prop_assert_eq!(chunked.closed(), bytewise.closed());
            }
            proptest::prop_assert!(chunked.at_frame_boundary());
        }
    }
}
