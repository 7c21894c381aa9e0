//! The codec of every generated client and server: tonic-prost's, except that a message that does
//! not decode is INVALID_ARGUMENT rather than INTERNAL. Bytes that are not the message the method
//! takes (invalid UTF-8 in a string, a truncated field) are the sender's fault, and nothing inside
//! the receiver failed; prost's message is kept, and it names the message and field, e.g.
//! `failed to decode Protobuf message: NewItem.name: ImportItemsRequest.items: invalid string
//! value: data is not UTF-8 encoded`.
//!
//! Clients decode with it too: an answer that does not decode is INVALID_ARGUMENT there as well,
//! raised locally, with the same message (`is_decode_error` tells it from the peer's refusals).

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, DecodeBuf},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// How prost's decode errors begin (its `DecodeError`'s `Display`).
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";

/// `tonic_prost::ProstCodec` with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(ProstCodec::new())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic::codec::Codec::encoder(&mut self.0)
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(tonic::codec::Codec::decoder(&mut self.0))
    }
}

/// `tonic_prost::ProstDecoder`, its decode errors as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        tonic::codec::Decoder::decode(&mut self.0, src).map_err(sender_fault)
    }

    fn buffer_settings(&self) -> BufferSettings {
        tonic::codec::Decoder::buffer_settings(&self.0)
    }
}

/// ProstDecoder's one error, prost's `DecodeError` as INTERNAL, as INVALID_ARGUMENT with the same
/// message.
fn sender_fault(status: Status) -> Status {
    match status.code() {
        Code::Internal => Status::invalid_argument(status.message()),
        _ => status,
    }
}

/// Whether `status` says a message did not decode: a request the peer could not read, or an
/// answer this side could not.
pub fn is_decode_error(status: &Status) -> bool {
    status.code() == Code::InvalidArgument && status.message().starts_with(DECODE_ERROR_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api as pb;

    /// What ProstDecoder answers for `bytes` as a `U`, through `sender_fault` as `Decoder` does.
    fn decode<U: Message + Default>(bytes: &[u8]) -> Result<U, Status> {
        U::decode(bytes).map_err(|error| sender_fault(Status::internal(error.to_string())))
    }

    #[test]
    fn invalid_utf8_is_invalid_argument_naming_the_field() {
        let item = pb::NewItem { id: 1, name: "okAB".into(), ..Default::default() };
        let mut bytes = pb::ImportItemsRequest { items: vec![item] }.encode_to_vec();
        let at = bytes.windows(4).position(|window| window == b"okAB").unwrap();
        bytes[at + 2..at + 4].copy_from_slice(&[0xff, 0xfe]);
        let status = decode::<pb::ImportItemsRequest>(&bytes).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("NewItem.name"), "{status:?}");
        assert!(is_decode_error(&status));
    }

    #[test]
    fn garbage_is_invalid_argument_and_other_statuses_pass_through() {
        let status = decode::<pb::GetItemRequest>(&[0xff; 6]).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(sender_fault(Status::resource_exhausted("too big")).code(), Code::ResourceExhausted);
        assert!(!is_decode_error(&Status::invalid_argument("invalid name: must not be blank")));
    }
}
