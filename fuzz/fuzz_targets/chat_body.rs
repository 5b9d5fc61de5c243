//! The policy's chat-body check (`policy::chat_body`): any body is read or
//! refused, never a panic; custom instructions put into valid JSON leave
//! valid JSON that differs from the input only in `promptPrefix`.
#![no_main]

use chatgate::policy::chat_body::ChatBody;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const INSTRUCTIONS: &str = "Answer in French.\n\"Quoted\" \\ and \u{2028} too";

/// What `promptPrefix` becomes for a conversation object.
fn with_prefix(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let text = match map.get("promptPrefix").and_then(Value::as_str) {
        Some(prefix) if !prefix.is_empty() => format!("{INSTRUCTIONS}\n\n{prefix}"),
        _ => INSTRUCTIONS.to_owned(),
    };
    map.insert("promptPrefix".to_owned(), Value::String(text));
}

fuzz_target!(|data: &[u8]| {
    let Ok(chat) = ChatBody::parse(data) else {
        return;
    };
    let out = chat.with_instructions(data, INSTRUCTIONS, |_| true);
    let Ok(mut expected) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let out = out.expect("instructions apply to every conversation");
    let got: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("not JSON any more ({e}): {}", String::from_utf8_lossy(&out)));
    with_prefix(&mut expected);
    if let Some(added) = expected.get_mut("addedConvo") {
        with_prefix(added);
    }
    assert_eq!(got, expected);
});
