//! PROTOCOL.md is the contract other implementations read: every request and
//! error code must be listed there with the number and name this build uses.

use ringmq_core::{ErrorCode, RequestCode};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("core/PROTOCOL.md is readable")
}

/// Rows of markdown tables as (number, name) pairs: `| 12 | Name | ...`.
fn rows(doc: &str) -> Vec<(u16, String)> {
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let number = cells.next()?.parse().ok()?;
            Some((number, cells.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn every_request_code_is_documented() {
    let rows = rows(&doc());
    for &code in RequestCode::ALL {
        assert!(
            rows.contains(&(code.as_u16(), code.name().to_owned())),
            "PROTOCOL.md lacks a row `| {} | {} |`",
            code.as_u16(),
            code.name()
        );
    }
}

#[test]
fn every_error_code_is_documented() {
    let rows = rows(&doc());
    for &code in ErrorCode::ALL {
        assert!(
            rows.contains(&(code.as_u16(), code.name().to_owned())),
            "PROTOCOL.md lacks a row `| {} | {} |`",
            code.as_u16(),
            code.name()
        );
    }
    // And nothing documented that the code does not know.
    for (number, name) in rows {
        let known = RequestCode::from_u16(number).is_some_and(|c| c.name() == name)
            || ErrorCode::from_u16(number).name() == name;
        assert!(
            known,
            "PROTOCOL.md documents `{number} {name}`, which this build does not know"
        );
    }
}
