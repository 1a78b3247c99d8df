package capture

import (
	"fmt"
	"strconv"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func fmtSscan(s string, n *int) (int, error) { return fmt.Sscan(s, n) }
