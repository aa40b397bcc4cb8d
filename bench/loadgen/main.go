// loadgen drives chat nodes (or Centrifugo, for comparison) over WebSocket as users do,
// and reports delivery latency.
//
// It connects -clients sockets (spread over -nodes), each joins one of -channels
// channels, then one sender per step sends at each rate of -rates for -seconds; every
// message's text is the send time in Unix nanoseconds, so a receiver's latency is its
// receive time minus that. The sender is a WebSocket client of the first node (-via
// ws: what users do), or a NATS client publishing straight to the log (-via nats: what
// `nats pub` does, with the publisher's nkey). One JSON line per step on stdout.
// Written in Go so that the generator is not what limits the figures: a Python one
// used 0.7 of a core at 50,000 deliveries a second on this machine.
//
// -protocol centrifugo speaks Centrifugo's JSON protocol instead of ours (connect,
// subscribe, publish over the client's socket), for the side-by-side figures.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
)

type step struct {
	Rate      float64 `json:"rate"`
	Delivered int64   `json:"delivered"`
	Expected  int64   `json:"expected"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	CPU       float64 `json:"cpu_cores"`
	NodesCPU  float64 `json:"nodes_cpu_cores"`
	Error     string  `json:"error,omitempty"`
}

// processCPU is the CPU seconds (user + system) the processes have used so far.
func processCPU(pids []string) float64 {
	total := 0.0
	for _, pid := range pids {
		if pid == "" {
			continue
		}
		raw, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			continue
		}
		fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		user, _ := strconv.ParseFloat(fields[11], 64)
		system, _ := strconv.ParseFloat(fields[12], 64)
		total += (user + system) / 100 // USER_HZ
	}
	return total
}

var marker = []byte(`"text":"`)

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(usage.Utime) + tv(usage.Stime)
}

// protocol is what differs between our nodes and Centrifugo: the socket's path, its
// first frame, a join and a send.
type protocol struct {
	path  string
	hello func() string
	join  func(channel string) string
	send  func(k int, channel, text string) string
}

var protocols = map[string]protocol{
	"chat": {
		path:  "/ws",
		hello: func() string { return "" }, // the token travels in the handshake
		join:  func(ch string) string { return fmt.Sprintf(`{"op":"join","channel":"%s"}`, ch) },
		send: func(k int, ch, text string) string {
			return fmt.Sprintf(`{"op":"send","channel":"%s","text":"%s"}`, ch, text)
		},
	},
	"centrifugo": {
		path:  "/connection/websocket",
		hello: func() string { return `{"id":1,"connect":{}}` },
		join: func(ch string) string {
			return fmt.Sprintf(`{"id":2,"subscribe":{"channel":"%s"}}`, ch)
		},
		send: func(k int, ch, text string) string {
			return fmt.Sprintf(`{"id":%d,"publish":{"channel":"%s","data":{"text":"%s"}}}`,
				k+3, ch, text)
		},
	},
}

func dial(node, token string, proto protocol) (*websocket.Conn, error) {
	header := http.Header{}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 60 * time.Second}
	conn, _, err := dialer.Dial(strings.Replace(node, "http", "ws", 1)+proto.path, header)
	if err == nil && proto.hello() != "" {
		err = conn.WriteMessage(websocket.TextMessage, []byte(proto.hello()))
	}
	return conn, err
}

func main() {
	nodes := flag.String("nodes", "", "comma-separated node base URLs (http://host:port)")
	token := flag.String("token", "", "bearer token for every socket")
	clients := flag.Int("clients", 1000, "subscribing sockets")
	channels := flag.Int("channels", 10, "channels (client i joins channel i % channels)")
	rates := flag.String("rates", "100", "comma-separated send rates (messages/s), one step each")
	seconds := flag.Float64("seconds", 3, "seconds per step")
	stopAbove := flag.Float64("stop-above", 50, "stop after a step whose p99 (ms) is above this")
	prefix := flag.String("prefix", "f", "channel name prefix")
	pids := flag.String("pids", "", "comma-separated pids of the servers whose CPU is reported")
	protoName := flag.String("protocol", "chat", "chat (our nodes) or centrifugo")
	via := flag.String("via", "ws", "ws: send through the first node's WebSocket; nats: "+
		"publish straight to the log (chat.<channel>, as `nats pub` does)")
	natsURL := flag.String("nats-url", "", "with -via nats: the NATS server")
	seedFile := flag.String("nkey", "", "with -via nats: the publisher's nkey seed file")
	flag.Parse()
	urls := strings.Split(*nodes, ",")
	proto, known := protocols[*protoName]
	if !known {
		fmt.Fprintln(os.Stderr, "unknown -protocol:", *protoName)
		os.Exit(2)
	}

	var delivered atomic.Int64
	var mu sync.Mutex
	var latencies []float64
	for i := 0; i < *clients; i++ {
		conn, err := dial(urls[i%len(urls)], *token, proto)
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		join := proto.join(fmt.Sprintf("%s%d", *prefix, i%*channels))
		if err := conn.WriteMessage(websocket.TextMessage, []byte(join)); err != nil {
			fmt.Fprintln(os.Stderr, "join:", err)
			os.Exit(1)
		}
		timed := i%4 == 0 // every client counts, every fourth also times (as the Python one)
		go func(conn *websocket.Conn, timed bool) {
			for {
				_, data, err := conn.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				for {
					at := indexOf(data, marker)
					if at < 0 {
						break
					}
					start := at + len(marker)
					end := start
					for end < len(data) && data[end] != '"' {
						end++
					}
					sent, err := strconv.ParseInt(string(data[start:end]), 10, 64)
					data = data[end:]
					if err != nil {
						continue // not one of ours (history from an earlier run)
					}
					delivered.Add(1)
					if timed {
						mu.Lock()
						latencies = append(latencies, float64(now-sent)/1e6)
						mu.Unlock()
					}
				}
			}
		}(conn, timed)
	}
	send := sendThroughNode(urls[0], *token, proto, *prefix)
	if *via == "nats" {
		send = publishToLog(*natsURL, *seedFile, *prefix)
	}
	time.Sleep(time.Second) // the joins' answers (load shaping before the first step)

	encoder := json.NewEncoder(os.Stdout)
	for _, field := range strings.Split(*rates, ",") {
		rate, _ := strconv.ParseFloat(field, 64)
		mu.Lock()
		latencies = latencies[:0]
		mu.Unlock()
		delivered.Store(0)
		total := int(rate * *seconds)
		failed := ""
		cpu0, nodes0, t0 := cpuSeconds(), processCPU(strings.Split(*pids, ",")), time.Now()
		for k := 0; k < total; k++ {
			due := t0.Add(time.Duration(float64(k) / rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			if err := send(k, k%*channels, strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
				failed = err.Error() // the server gave up on the sender: this step is the limit
				break
			}
		}
		time.Sleep(time.Second) // the last sends' deliveries
		elapsed := time.Since(t0).Seconds()
		mu.Lock()
		sorted := append([]float64(nil), latencies...)
		mu.Unlock()
		sort.Float64s(sorted)
		result := step{
			Rate:      rate,
			Delivered: delivered.Load(),
			Expected:  int64(total) * int64(*clients) / int64(*channels),
			P50:       quantile(sorted, 0.5),
			P99:       quantile(sorted, 0.99),
			Max:       quantile(sorted, 1),
			CPU:       (cpuSeconds() - cpu0) / elapsed,
			NodesCPU:  (processCPU(strings.Split(*pids, ",")) - nodes0) / elapsed,
			Error:     failed,
		}
		_ = encoder.Encode(result)
		if result.P99 > *stopAbove || result.Delivered < result.Expected || failed != "" {
			break
		}
	}
}

// sendThroughNode sends as a user does, over a WebSocket of the first node.
func sendThroughNode(node, token string, proto protocol, prefix string) func(int, int, string) error {
	sender, err := dial(node, token, proto)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sender:", err)
		os.Exit(1)
	}
	go func() { // acks and errors: read and drop
		for {
			if _, _, err := sender.ReadMessage(); err != nil {
				return
			}
		}
	}()
	return func(k, channel int, text string) error {
		frame := proto.send(k, fmt.Sprintf("%s%d", prefix, channel), text)
		return sender.WriteMessage(websocket.TextMessage, []byte(frame))
	}
}

// publishToLog publishes on chat.<channel> with the publisher's nkey, as `nats pub`
// does: the stream stores it (as chat.<channel>.raw) and every node delivers it.
func publishToLog(url, seedFile, prefix string) func(int, int, string) error {
	auth, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nkey:", err)
		os.Exit(1)
	}
	nc, err := nats.Connect(url, auth)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats:", err)
		os.Exit(1)
	}
	return func(k, channel int, text string) error {
		return nc.Publish(fmt.Sprintf("chat.%s%d", prefix, channel), []byte(text))
	}
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)) * q)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func indexOf(data, sub []byte) int {
	return bytes.Index(data, sub)
}
