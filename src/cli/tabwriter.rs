//! Cells in columns, as Go's text/tabwriter sets them for docker and buildx
//! tables: each column as wide as its widest cell plus `padding`, at least
//! `min_width`; the last cell of a row ends no column.

pub fn tabwrite<S: AsRef<str>>(rows: &[Vec<S>], padding: usize, min_width: usize) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.as_ref().chars().count() + padding).max(min_width);
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let cell = cell.as_ref();
            match widths.get(i).filter(|_| i + 1 < row.len()) {
                Some(w) => out += &format!("{cell:<w$}"),
                None => out += cell,
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_take_the_widest_cell_and_the_last_cell_ends_none() {
        let rows = vec![vec!["TARGET", "DESCRIPTION"], vec!["build-stage", "compiles"], vec!["x", ""]];
        assert_eq!(super::tabwrite(&rows, 1, 0), "TARGET      DESCRIPTION\nbuild-stage compiles\nx           \n");
        assert_eq!(super::tabwrite(&[vec!["a", "b"]], 3, 10), "a         b\n");
    }
}
